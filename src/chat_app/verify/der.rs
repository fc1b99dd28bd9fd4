//! The small DER walk that takes the RSA public key out of an X.509 certificate's
//! SubjectPublicKeyInfo. It must not panic or read out of bounds on any input, and it
//! judges structure only: trust comes from where the certificate was fetched.

/// The input is not a DER X.509 certificate carrying an RSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a DER X.509 certificate with an RSA public key")]
pub(crate) struct NotRsaCert;

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT` — the optional version field of a TBSCertificate.
const VERSION: u8 = 0xa0;
/// 1.2.840.113549.1.1.1 (rsaEncryption), content bytes of the OID.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Reads tag-length-value items off the front of a slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Reader { rest: input }
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// One item: its tag and its contents. Definite lengths only (DER), at most 4 length
    /// bytes, low tag numbers only — everything a certificate's outer structure uses.
    fn item(&mut self) -> Result<(u8, &'a [u8]), NotRsaCert> {
        let (&tag, rest) = self.rest.split_first().ok_or(NotRsaCert)?;
        if tag & 0x1f == 0x1f {
            return Err(NotRsaCert);
        }
        let (&first, mut rest) = rest.split_first().ok_or(NotRsaCert)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err(NotRsaCert);
            }
            let (bytes, after) = rest.split_at_checked(count).ok_or(NotRsaCert)?;
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, byte| (len << 8) | usize::from(*byte))
        };
        let (contents, after) = rest.split_at_checked(len).ok_or(NotRsaCert)?;
        self.rest = after;
        Ok((tag, contents))
    }

    fn expect(&mut self, want: u8) -> Result<&'a [u8], NotRsaCert> {
        match self.item()? {
            (tag, contents) if tag == want => Ok(contents),
            _ => Err(NotRsaCert),
        }
    }
}

/// The `RSAPublicKey` (RFC 8017 A.1.1) inside the certificate's SubjectPublicKeyInfo:
/// the form `aws_lc_rs`'s RSA_PKCS1_* verification documents.
pub(crate) fn rsa_public_key(cert: &[u8]) -> Result<&[u8], NotRsaCert> {
    let mut outer = Reader::new(cert);
    let certificate = outer.expect(SEQUENCE)?;
    if !outer.rest.is_empty() {
        return Err(NotRsaCert);
    }
    let mut tbs = Reader::new(Reader::new(certificate).expect(SEQUENCE)?);
    if tbs.peek() == Some(VERSION) {
        tbs.item()?;
    }
    tbs.expect(INTEGER)?; // serialNumber
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    tbs.expect(SEQUENCE)?; // validity
    tbs.expect(SEQUENCE)?; // subject
    let mut spki = Reader::new(tbs.expect(SEQUENCE)?);
    let algorithm = spki.expect(SEQUENCE)?;
    if Reader::new(algorithm).expect(OID)? != RSA_ENCRYPTION {
        return Err(NotRsaCert);
    }
    let bits = spki.expect(BIT_STRING)?;
    let (&unused_bits, key) = bits.split_first().ok_or(NotRsaCert)?;
    if unused_bits != 0 {
        return Err(NotRsaCert);
    }
    // The key must be exactly one SEQUENCE (modulus, exponent).
    let mut inner = Reader::new(key);
    inner.expect(SEQUENCE)?;
    if !inner.rest.is_empty() {
        return Err(NotRsaCert);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_cert() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        let cert = rcgen::CertificateParams::new(vec!["kabar.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let signer =
            aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&key.serialize_der()).expect("pkcs8");
        use aws_lc_rs::signature::KeyPair;
        (cert.der().to_vec(), signer.public_key().as_ref().to_vec())
    }

    #[test]
    fn the_rsa_key_of_a_certificate_is_found() {
        let (cert, public) = rsa_cert();
        assert_eq!(rsa_public_key(&cert).expect("rsa key"), public.as_slice());
    }

    #[test]
    fn an_ec_certificate_is_refused() {
        let key = rcgen::KeyPair::generate().expect("ec key");
        let cert = rcgen::CertificateParams::new(vec![])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        assert_eq!(rsa_public_key(cert.der()), Err(NotRsaCert));
    }

    #[test]
    fn every_truncation_and_garbage_is_refused_without_a_panic() {
        let (cert, _) = rsa_cert();
        for len in 0..cert.len() {
            assert_eq!(rsa_public_key(&cert[..len]), Err(NotRsaCert), "{len}");
        }
        let mut trailing = cert.clone();
        trailing.push(0);
        assert_eq!(rsa_public_key(&trailing), Err(NotRsaCert));
        // Every single-byte corruption either fails cleanly or still yields some key.
        for at in 0..cert.len() {
            let mut bent = cert.clone();
            bent[at] ^= 0xff;
            let _ = rsa_public_key(&bent);
        }
        let mut seed = 0x2545_f491_u32;
        for len in [0usize, 1, 2, 5, 64, 1000] {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed.to_le_bytes()[0]
                })
                .collect();
            assert_eq!(rsa_public_key(&garbage), Err(NotRsaCert));
        }
        for bad in [
            &[0x30, 0x85, 1, 0, 0, 0, 0][..],
            &[0x30, 0x80],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x1f, 0x01, 0x00],
            &[0x30, 0x02, 0x30, 0x00],
        ] {
            assert_eq!(rsa_public_key(bad), Err(NotRsaCert));
        }
    }
}
