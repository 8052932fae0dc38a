//! A throwaway CA with a server certificate for 127.0.0.1 and a client certificate, made by
//! the `openssl` command line tool in a temporary directory (for TLS to redis-server).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

/// PEM files of one CA and the two certificates it signed.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// Makes them; `None` when `openssl` is not installed.
    ///
    /// # Panics
    /// When `openssl` fails.
    pub fn make() -> Option<Self> {
        if !Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return None;
        }
        let certs = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        certs.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=switchyard test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        // Extensions make them X.509 v3 certificates (rustls refuses v1) for their purpose.
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let file = |suffix: &str| format!("{name}.{suffix}");
            std::fs::write(certs.dir.path().join(file("ext")), ext).unwrap();
            certs.openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &file("key"),
                "-out",
                &file("csr"),
            ]);
            certs.openssl(&[
                "x509",
                "-req",
                "-in",
                &file("csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &file("ext"),
                "-out",
                &file("crt"),
            ]);
        }
        Some(certs)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The file `name` (`ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
