//! Fetches the server's `/metrics` and reads samples from the Prometheus text.

use anyhow::{Context as _, bail};

use crate::{http::HttpConn, target::Target};

/// The Prometheus text of `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    /// Wraps already fetched text.
    pub fn from_text(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    /// The value of the sample named exactly `series` (name plus `{labels}` as printed).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// The sum of every sample of `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// `GET /metrics`.
///
/// # Errors
/// The server is unreachable or answers other than 200.
pub async fn fetch(target: &Target) -> anyhow::Result<Metrics> {
    let mut conn = HttpConn::connect(target).await?;
    let (status, body) = conn.get("/metrics").await.context("GET /metrics")?;
    if !status.is_success() {
        bail!("GET /metrics answered {status}");
    }
    Ok(Metrics::from_text(
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples() {
        let m = Metrics::from_text(
            "# HELP x\nswitchyard_connections{transport=\"websocket\"} 12\n\
             switchyard_connections{transport=\"sse\"} 3\nswitchyard_channels 4\n",
        );
        assert_eq!(
            m.get("switchyard_connections{transport=\"websocket\"}"),
            Some(12.0)
        );
        assert_eq!(m.get("switchyard_channels"), Some(4.0));
        assert_eq!(m.get("switchyard_nope"), None);
        assert_eq!(m.sum("switchyard_connections"), 15.0);
    }
}
