//! The `certificate` kind: a PEM file with the app registration's certificate and its RSA private key, and the
//! client assertion (an RS256 JWT) signed with it.
//!
//! Signing uses aws-lc-rs, the crypto library rustls already brings in, so no RSA crate of our own is needed.

use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::{DateTime, Utc};

/// The certificate's private key and thumbprint. `Debug` shows the thumbprint only.
pub struct CertificateKey {
    key: RsaKeyPair,
    x5t: String,
}

impl std::fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateKey").field("x5t", &self.x5t).field("key", &"redacted").finish()
    }
}

impl CertificateKey {
    /// base64url SHA-1 of the certificate's DER bytes: the JWT `x5t` header Entra looks the certificate up by.
    pub fn x5t(&self) -> &str {
        &self.x5t
    }

    /// The RSA public key (PKCS#1 `RSAPublicKey` DER), for tests and the fake sign-in endpoint.
    pub fn public_key_der(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }
}

/// Reads a PEM file holding a certificate and an RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1
/// `RSA PRIVATE KEY`, unencrypted).
pub fn parse_certificate_pem(pem: &str) -> Result<CertificateKey, String> {
    let cert = pem_der(pem, "CERTIFICATE")
        .ok_or("the file holds no '-----BEGIN CERTIFICATE-----' block")?
        .map_err(|_| "the certificate block is not valid base64".to_string())?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
    let x5t = URL_SAFE_NO_PAD.encode(digest.as_ref());
    let key = if let Some(der) = pem_der(pem, "PRIVATE KEY") {
        let der = der.map_err(|_| "the private key block is not valid base64".to_string())?;
        RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("the private key is not an RSA key ({e})"))?
    } else if let Some(der) = pem_der(pem, "RSA PRIVATE KEY") {
        let der = der.map_err(|_| "the private key block is not valid base64".to_string())?;
        RsaKeyPair::from_der(&der).map_err(|e| format!("the RSA private key is unreadable ({e})"))?
    } else if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("the private key is encrypted; export it without a password (e.g. `openssl pkey`)".into());
    } else {
        return Err("the file holds no '-----BEGIN PRIVATE KEY-----' block (the certificate's RSA key)".into());
    };
    Ok(CertificateKey { key, x5t })
}

/// The bytes of the first `label` block, `None` when there is none.
fn pem_der(pem: &str, label: &str) -> Option<Result<Vec<u8>, base64::DecodeError>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    let body: String = pem[start..stop].lines().map(str::trim).filter(|l| !l.contains(':')).collect();
    Some(STANDARD.decode(body.trim()))
}

/// Builds the client assertion: a JWT signed RS256 with header `x5t`, `aud` = the token endpoint,
/// `iss` = `sub` = the client id, a random `jti`, and `nbf`/`iat`/`exp` around `now` (valid 10 minutes).
pub fn client_assertion(
    client_id: &str,
    token_url: &str,
    key: &CertificateKey,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": key.x5t });
    let now_s = now.timestamp();
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now_s,
        "iat": now_s,
        "exp": now_s + 600,
    });
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0; key.key.public_modulus_len()];
    key.key
        .sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
        .map_err(|_| "cannot sign the client assertion with the certificate's key".to_string())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    const PEM: &str = include_str!("testdata/test-cert-and-key.pem");

    #[test]
    fn certificate_thumbprint_and_key() {
        let key = parse_certificate_pem(PEM).unwrap();
        // openssl x509 -outform DER | openssl dgst -sha1 -binary | basenc --base64url
        assert_eq!(key.x5t(), "zc8jobrOOD9Wddy6crRPS4RJFaA");
        assert!(!format!("{key:?}").contains("BEGIN"));
    }

    #[test]
    fn client_assertion_is_a_valid_rs256_jwt() {
        let key = parse_certificate_pem(PEM).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let url = "https://login.example/t/oauth2/v2.0/token";
        let jwt = client_assertion("app-1", url, &key, now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["x5t"], "zc8jobrOOD9Wddy6crRPS4RJFaA");
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], url);
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["nbf"], now.timestamp());
        assert_eq!(claims["exp"], now.timestamp() + 600);
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key_der());
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).unwrap();
        let mut tampered = signature.clone();
        tampered[0] ^= 1;
        assert!(public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &tampered).is_err());
    }

    #[test]
    fn unreadable_files_say_what_is_missing() {
        let only_cert = &PEM[..PEM.find("-----BEGIN PRIVATE KEY-----").unwrap_or(PEM.len())];
        assert!(parse_certificate_pem(only_cert).unwrap_err().contains("PRIVATE KEY"));
        assert!(parse_certificate_pem("nothing").unwrap_err().contains("CERTIFICATE"));
        let encrypted =
            format!("{only_cert}\n-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
        assert!(parse_certificate_pem(&encrypted).unwrap_err().contains("encrypted"));
    }
}
