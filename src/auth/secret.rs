//! The server secret that signs tokens: configured, or generated once into the data directory.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

const SECRET_FILE: &str = "token-secret";

/// Errors reading or creating the secret file.
#[derive(Debug, thiserror::Error)]
#[error("token secret {path}: {reason}")]
pub struct SecretError {
    path: PathBuf,
    reason: String,
}

/// The configured secret, or the one stored in `data_dir` (created on first use).
pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> Result<Vec<u8>, SecretError> {
    if let Some(s) = configured {
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    let err = |reason: String| SecretError {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = URL_SAFE_NO_PAD
                .decode(text.trim())
                .map_err(|e| err(e.to_string()))?;
            if secret.len() < 32 {
                return Err(err("shorter than 32 bytes".into()));
            }
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            crate::transport::tls::private_dir(data_dir).map_err(|e| err(e.to_string()))?;
            crate::transport::tls::write_private(&path, URL_SAFE_NO_PAD.encode(&secret).as_bytes())
                .map_err(|e| err(e.to_string()))?;
            Ok(secret)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("roomcast-secret-{}", uuid::Uuid::new_v4()));
        let a = load_or_create(None, &dir).unwrap();
        let b = load_or_create(None, &dir).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
        assert_eq!(
            load_or_create(Some("x".repeat(40).as_str()), &dir)
                .unwrap()
                .len(),
            40
        );
        std::fs::write(dir.join(SECRET_FILE), "short").unwrap();
        assert!(load_or_create(None, &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
