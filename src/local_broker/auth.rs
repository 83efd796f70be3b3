//! Password checks for the embedded broker: an rmqtt `ClientAuthenticate` hook that verifies the
//! configured users, argon2 hashes included (rmqtt-acl itself only compares plain text).
//!
//! Every connect that rmqtt does not let through as anonymous is decided here: a configured user (or
//! the gateway's own health client) with the right password is accepted; anything else is refused
//! with CONNACK 5 (not authorised), as Mosquitto 2 answers a wrong password.

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::AuthResult;

use super::settings::Secret;

/// Any priority works (no other authentication hook is registered); the value only orders it first.
pub(super) const PRIORITY: u32 = 100;

/// A PHC string for `password` (argon2id, default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Checks that `hash` is a PHC string argon2 can verify against.
pub fn check_hash(hash: &str) -> Result<(), argon2::password_hash::Error> {
    let parsed = PasswordHash::new(hash)?;
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        _ => Err(argon2::password_hash::Error::Algorithm),
    }
}

pub(super) struct UserAuth {
    pub(super) users: Arc<Vec<(String, Secret)>>,
}

fn verify(secret: &Secret, given: &[u8]) -> bool {
    match secret {
        Secret::Plain(p) => p.as_bytes() == given,
        Secret::Hash(h) => {
            PasswordHash::new(h).is_ok_and(|parsed| Argon2::default().verify_password(given, &parsed).is_ok())
        }
    }
}

#[async_trait]
impl Handler for UserAuth {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::ClientAuthenticate(info) = param else { return (true, acc) };
        // Reached only when a username was given, or none on a listener without anonymous access.
        let refused = (false, Some(HookResult::AuthResult(AuthResult::NotAuthorized)));
        let Some(name) = info.username() else { return refused };
        let Some((_, secret)) = self.users.iter().find(|(u, _)| u.as_str() == &**name) else {
            return refused;
        };
        let given = info.password().map(|p| p.to_vec()).unwrap_or_default();
        let secret = secret.clone();
        // argon2 takes tens of milliseconds of CPU by design: keep it off the runtime's workers.
        let ok = tokio::task::spawn_blocking(move || verify(&secret, &given)).await.unwrap_or(false);
        let result = if ok { AuthResult::Allow(false, None) } else { AuthResult::NotAuthorized };
        (false, Some(HookResult::AuthResult(result)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        check_hash(&h).unwrap();
        assert!(verify(&Secret::Hash(h.clone()), b"s3cret"));
        assert!(!verify(&Secret::Hash(h), b"s3cret "));
        assert!(check_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(check_hash("plain").is_err());
    }
}
