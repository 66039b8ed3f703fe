//! Signature verifications of certificate chains and CRLs, remembered.
//!
//! Every full handshake of a CA-issued client verifies the same signatures again: the
//! intermediate's signature by the root, both CRLs' signatures by their issuers and, for a
//! client seen before, its leaf's signature by the intermediate. None of these change between
//! handshakes: a signature check is a pure function of the algorithm, the public key, the
//! signed bytes and the signature. The chain verifier of each CA source (`chain.rs`) therefore
//! verifies through these wrappers, which remember the inputs that verified (a SHA-256 digest
//! of all four) and answer them again without the public-key operation. Everything else runs
//! on every handshake as before: path building, validity dates, EKU, the CRL lookup of every
//! certificate of the path, the revocation policy and `max_lifetime`; the client's handshake
//! signature (CertificateVerify, over a transcript that is new each time) is verified by
//! `server_config.rs` with the provider's own algorithms, never through this memo.
//!
//! Only successes are remembered, at most [`CAPACITY`] of them; when full, the memo starts
//! over. A signature that failed once fails again at full cost.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, OnceLock};

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

/// Remembered successes. Each entry is 32 bytes of digest plus the set's overhead.
pub const CAPACITY: usize = 4096;

static VERIFIED: LazyLock<Mutex<HashSet<[u8; 32]>>> =
    LazyLock::new(|| Mutex::new(HashSet::with_capacity(64)));

fn verified() -> std::sync::MutexGuard<'static, HashSet<[u8; 32]>> {
    // The set holds plain digests; a panic elsewhere cannot leave it half-written.
    VERIFIED.lock().unwrap_or_else(|p| p.into_inner())
}

/// One of the provider's algorithms, remembering what it verified.
#[derive(Debug)]
struct Memo {
    inner: &'static dyn SignatureVerificationAlgorithm,
}

/// What identifies one verification: every input, each length-prefixed so that no two
/// different inputs hash the same bytes.
fn key(
    alg: &dyn SignatureVerificationAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        alg.signature_alg_id().as_ref(),
        alg.public_key_alg_id().as_ref(),
        public_key,
        signature,
        message,
    ] {
        ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl SignatureVerificationAlgorithm for Memo {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key = key(self.inner, public_key, message, signature);
        if verified().contains(&key) {
            return Ok(());
        }
        self.inner
            .verify_signature(public_key, message, signature)?;
        let mut set = verified();
        if set.len() >= CAPACITY {
            set.clear();
        }
        set.insert(key);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// `algs` with every chain and CRL verification remembered (`all`); the TLS signature
/// schemes (`mapping`, the handshake signatures) are left as they are.
///
/// rustls wants `'static` algorithm lists, so the wrappers are made once per process, for the
/// first list this is called with (certguard has one provider); any other list is returned
/// unchanged.
pub fn memoized(algs: WebPkiSupportedAlgorithms) -> WebPkiSupportedAlgorithms {
    type Algs = &'static [&'static dyn SignatureVerificationAlgorithm];
    static WRAPPED: OnceLock<(Algs, Algs)> = OnceLock::new();
    let (original, wrapped) = WRAPPED.get_or_init(|| {
        let memos: &'static [Memo] = Vec::leak(
            algs.all
                .iter()
                .map(|&inner| Memo { inner })
                .collect::<Vec<_>>(),
        );
        let wrapped: Algs = Vec::leak(
            memos
                .iter()
                .map(|m| m as &'static dyn SignatureVerificationAlgorithm)
                .collect::<Vec<_>>(),
        );
        (algs.all, wrapped)
    });
    if !std::ptr::eq(*original, algs.all) {
        return algs;
    }
    WebPkiSupportedAlgorithms {
        all: wrapped,
        mapping: algs.mapping,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// The provider's ECDSA P-256 / SHA-256 verifier.
    fn p256() -> &'static dyn SignatureVerificationAlgorithm {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
            .map(|(_, a)| a[0])
            .expect("P-256 in the provider")
    }

    /// Counts the real verifications under the memo.
    #[derive(Debug)]
    struct Counting(AtomicUsize);

    static COUNTING: Counting = Counting(AtomicUsize::new(0));

    impl SignatureVerificationAlgorithm for Counting {
        fn verify_signature(
            &self,
            pk: &[u8],
            msg: &[u8],
            sig: &[u8],
        ) -> Result<(), InvalidSignature> {
            self.0.fetch_add(1, Ordering::SeqCst);
            p256().verify_signature(pk, msg, sig)
        }
        fn public_key_alg_id(&self) -> AlgorithmIdentifier {
            p256().public_key_alg_id()
        }
        fn signature_alg_id(&self) -> AlgorithmIdentifier {
            p256().signature_alg_id()
        }
    }

    fn signed(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let sig = key.sign(&rng, message).unwrap();
        (key.public_key().as_ref().to_vec(), sig.as_ref().to_vec())
    }

    #[test]
    fn a_verified_signature_is_answered_again_without_the_public_key_operation() {
        let memo = Memo { inner: &COUNTING };
        let calls = || COUNTING.0.load(Ordering::SeqCst);
        let msg = b"memo test: tbsCertList of a CRL, say".to_vec();
        let (pk, sig) = signed(&msg);

        let before = calls();
        assert!(memo.verify_signature(&pk, &msg, &sig).is_ok());
        assert_eq!(calls(), before + 1, "the first verification is done");
        assert!(memo.verify_signature(&pk, &msg, &sig).is_ok());
        assert_eq!(calls(), before + 1, "the second one is remembered");

        // Any other input is verified, and a wrong one still fails, every time.
        let mut other_msg = msg.clone();
        other_msg[0] ^= 1;
        let mut bad_sig = sig.clone();
        let last = bad_sig.len() - 1;
        bad_sig[last] ^= 1;
        let (other_pk, _) = signed(&msg);
        for _ in 0..2 {
            assert!(memo.verify_signature(&pk, &other_msg, &sig).is_err());
            assert!(memo.verify_signature(&pk, &msg, &bad_sig).is_err());
            assert!(memo.verify_signature(&other_pk, &msg, &sig).is_err());
        }
        assert_eq!(calls(), before + 7, "failures are never remembered");
    }

    #[test]
    fn the_memo_wraps_chain_algorithms_only() {
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let memo = memoized(algs);
        assert_eq!(memo.all.len(), algs.all.len());
        assert!(
            !std::ptr::eq(memo.all, algs.all),
            "chain algorithms are wrapped"
        );
        assert!(
            std::ptr::eq(memo.mapping, algs.mapping),
            "handshake signatures are not"
        );
        for (m, a) in memo.all.iter().zip(algs.all) {
            assert_eq!(m.signature_alg_id(), a.signature_alg_id());
            assert_eq!(m.public_key_alg_id(), a.public_key_alg_id());
        }
        // A second call gives the same wrappers (made once per process).
        assert!(std::ptr::eq(memoized(algs).all, memo.all));

        // The wrapped P-256 verifier verifies for real.
        let msg = b"memo test: a certificate's TBS".to_vec();
        let (pk, sig) = signed(&msg);
        let wrapped = memo
            .all
            .iter()
            .find(|a| {
                a.signature_alg_id() == p256().signature_alg_id()
                    && a.public_key_alg_id() == p256().public_key_alg_id()
            })
            .unwrap();
        assert!(wrapped.verify_signature(&pk, &msg, &sig).is_ok());
        assert!(wrapped
            .verify_signature(&pk, b"something else", &sig)
            .is_err());
    }
}
