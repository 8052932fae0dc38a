//! A crowd of subscribers, one tokio task each: bounded opening concurrency, readiness
//! signals, and a stop that hands every handler back to the scenario.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::bail;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinSet,
    time::{Instant, timeout},
};

use crate::{
    clients::{self, ClientConfig, Flow, Handler, Transport},
    limits,
    target::{self, Sources, Target},
};

/// What a member reports as it goes.
#[derive(Debug)]
pub enum Signal {
    /// Its subscription is live.
    Subscribed,
    /// It failed before subscribing.
    Failed {
        /// Why.
        error: String,
        /// Because the process ran out of file descriptors.
        fd_exhausted: bool,
    },
    /// Its client returned after subscribing: `None` when its handler said stop.
    Ended {
        /// Why, when it was not the handler's choice.
        error: Option<String>,
    },
}

/// One member as handed back by [`Swarm::stop`].
#[derive(Debug)]
pub struct Member<H> {
    /// Its position in the swarm.
    pub index: usize,
    /// The index of its server in [`SwarmConfig::targets`].
    pub node: usize,
    /// Its transport.
    pub transport: Transport,
    /// Its handler, with whatever it recorded.
    pub handler: H,
    /// Whether it got subscribed.
    pub subscribed: bool,
    /// Why its client ended, if it ended on its own with an error.
    pub error: Option<String>,
}

/// What every member shares.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// The server node(s): members are spread over them in contiguous blocks (see
    /// [`node_of`]). At least one.
    pub targets: Vec<Target>,
    /// Source addresses.
    pub sources: Sources,
    /// Client tuning.
    pub client: ClientConfig,
    /// Connections being opened (connect + subscribe) at once.
    pub concurrency: usize,
}

/// Subscriber tasks and their signals.
pub struct Swarm<H> {
    tasks: JoinSet<Member<H>>,
    signals: mpsc::UnboundedReceiver<Signal>,
    stop: watch::Sender<bool>,
    size: usize,
    /// Members subscribed so far.
    pub subscribed: usize,
    /// Members whose client ended after subscribing (see [`Signal::Ended`]).
    pub ended: usize,
    /// The first few errors of members that ended on their own.
    pub end_errors: Vec<String>,
}

/// Errors kept verbatim in reports; the rest are only counted.
const KEPT_ERRORS: usize = 5;

/// The node (index into [`SwarmConfig::targets`]) that member `index` of `size` connects
/// to: contiguous blocks, member `i` on node `i * nodes / size`. Blocks rather than
/// round-robin, so that a per-member pattern such as `mix`'s transport `i % 4` is spread
/// over every node alike.
pub fn node_of(index: usize, size: usize, nodes: usize) -> usize {
    if nodes <= 1 || size == 0 {
        return 0;
    }
    (index * nodes / size).min(nodes - 1)
}

struct Wrapped<H> {
    inner: H,
    permit: Option<OwnedSemaphorePermit>,
    signals: mpsc::UnboundedSender<Signal>,
    subscribed: bool,
}

impl<H: Handler> Handler for Wrapped<H> {
    fn subscribed(&mut self) {
        if !self.subscribed {
            self.subscribed = true;
            self.permit = None;
            let _ = self.signals.send(Signal::Subscribed);
        }
        self.inner.subscribed();
    }

    fn event(&mut self, bytes: &[u8]) -> Flow {
        self.inner.event(bytes)
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

impl<H: Handler + 'static> Swarm<H> {
    /// Spawns one task per `(transport, channel, handler)`; each connects (from its source
    /// address), subscribes and runs until its handler stops, its connection ends, or
    /// [`Swarm::stop`].
    pub fn spawn(config: &SwarmConfig, members: Vec<(Transport, String, H)>) -> Self {
        let (signal_tx, signals) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let shared = Arc::new(config.clone());
        let size = members.len();
        let mut tasks = JoinSet::new();
        assert!(!config.targets.is_empty(), "a swarm needs a server");
        for (index, (transport, channel, handler)) in members.into_iter().enumerate() {
            let source = config.sources.for_index(index);
            let node = node_of(index, size, config.targets.len());
            let wrapped = Wrapped {
                inner: handler,
                permit: None,
                signals: signal_tx.clone(),
                subscribed: false,
            };
            tasks.spawn(member(
                index,
                transport,
                channel,
                node,
                source,
                wrapped,
                Arc::clone(&shared),
                Arc::clone(&gate),
                stop_rx.clone(),
            ));
        }
        Self {
            tasks,
            signals,
            stop,
            size,
            subscribed: 0,
            ended: 0,
            end_errors: Vec::new(),
        }
    }

    /// Members in the swarm.
    pub fn size(&self) -> usize {
        self.size
    }

    fn record(&mut self, signal: &Signal) {
        match signal {
            Signal::Subscribed => self.subscribed += 1,
            Signal::Ended { error } => {
                self.ended += 1;
                if let Some(e) = error
                    && self.end_errors.len() < KEPT_ERRORS
                {
                    self.end_errors.push(e.clone());
                }
            }
            Signal::Failed { .. } => {}
        }
    }

    /// The next signal, waiting at most `wait` (`None` on timeout).
    pub async fn next_signal(&mut self, wait: Duration) -> Option<Signal> {
        let signal = timeout(wait, self.signals.recv()).await.ok().flatten()?;
        self.record(&signal);
        Some(signal)
    }

    /// Takes the signals already sent, without waiting.
    pub fn drain_signals(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(signal) = self.signals.try_recv() {
            self.record(&signal);
            out.push(signal);
        }
        out
    }

    /// Waits until every member is subscribed.
    ///
    /// # Errors
    /// A member failed to connect or subscribe (with a clear message when out of file
    /// descriptors), or no member got subscribed for `stall`.
    pub async fn wait_subscribed(&mut self, stall: Duration) -> anyhow::Result<()> {
        while self.subscribed < self.size {
            match self.next_signal(stall).await {
                None => bail!(
                    "only {} of {} subscribers subscribed; none more for {stall:?}",
                    self.subscribed,
                    self.size
                ),
                Some(Signal::Failed {
                    error,
                    fd_exhausted,
                }) => {
                    if fd_exhausted {
                        bail!("{}", limits::exhausted_message(self.subscribed, self.size));
                    }
                    bail!(
                        "a subscriber failed after {} of {} subscribed: {error}",
                        self.subscribed,
                        self.size
                    );
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Stops every member and returns them, waiting at most `grace` for them to finish (the
    /// rest are aborted and missing from the result).
    pub async fn stop(mut self, grace: Duration) -> Vec<Member<H>> {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + grace;
        let mut members = Vec::with_capacity(self.size);
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await
        {
            if let Ok(member) = joined {
                members.push(member);
            }
        }
        self.tasks.abort_all();
        members.sort_by_key(|m| m.index);
        members
    }
}

struct Failure {
    error: String,
    fd_exhausted: bool,
}

#[allow(clippy::too_many_arguments)]
async fn member<H: Handler>(
    index: usize,
    transport: Transport,
    channel: String,
    node: usize,
    source: Option<IpAddr>,
    mut wrapped: Wrapped<H>,
    shared: Arc<SwarmConfig>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Member<H> {
    let run = async {
        wrapped.permit = Some(
            gate.acquire_owned()
                .await
                .expect("the gate is never closed"),
        );
        let server = &shared.targets[node];
        let stream = target::connect(server, source).await.map_err(|e| Failure {
            fd_exhausted: limits::is_fd_exhausted(&e),
            error: format!("connect to {} from {source:?}: {e}", server.addr),
        })?;
        clients::run(
            transport,
            stream,
            server,
            &channel,
            &shared.client,
            &mut wrapped,
        )
        .await
        .map_err(|e| Failure {
            error: format!("{:#}", e),
            fd_exhausted: e
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(limits::is_fd_exhausted),
        })
    };
    let result = tokio::select! {
        r = run => Some(r),
        _ = stop.wait_for(|stop| *stop) => None,
    };
    let error = match result {
        None => None,
        Some(Ok(())) => {
            let _ = wrapped.signals.send(Signal::Ended { error: None });
            None
        }
        Some(Err(f)) => {
            let signal = if wrapped.subscribed {
                Signal::Ended {
                    error: Some(f.error.clone()),
                }
            } else {
                Signal::Failed {
                    error: f.error.clone(),
                    fd_exhausted: f.fd_exhausted,
                }
            };
            let _ = wrapped.signals.send(signal);
            Some(f.error)
        }
    };
    Member {
        index,
        node,
        transport,
        subscribed: wrapped.subscribed,
        handler: wrapped.inner,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::node_of;

    #[test]
    fn spreads_members_over_nodes_in_blocks() {
        let nodes: Vec<usize> = (0..8).map(|i| node_of(i, 8, 2)).collect();
        assert_eq!(nodes, [0, 0, 0, 0, 1, 1, 1, 1]);
        let nodes: Vec<usize> = (0..5).map(|i| node_of(i, 5, 2)).collect();
        assert_eq!(nodes, [0, 0, 0, 1, 1]);
        assert!((0..7).all(|i| node_of(i, 7, 1) == 0));
        let three: Vec<usize> = (0..7).map(|i| node_of(i, 7, 3)).collect();
        assert_eq!(three, [0, 0, 0, 1, 1, 2, 2]);
        // More nodes than members: each member on its own node.
        assert_eq!((0..2).map(|i| node_of(i, 2, 4)).collect::<Vec<_>>(), [0, 2]);
    }
}
