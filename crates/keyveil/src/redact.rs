//! TEMPORARY naive raw-value redactor with the keyveil-redact API, until that crate lands.
#![allow(missing_docs)]
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Redactor(Arc<Vec<(String, Vec<u8>)>>);
impl Redactor {
    pub fn new<I, N, V>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: AsRef<[u8]>,
    {
        Redactor(Arc::new(
            secrets
                .into_iter()
                .map(|(n, v)| (n.into(), v.as_ref().to_vec()))
                .collect(),
        ))
    }
    pub fn redact(&self, input: &[u8]) -> (Vec<u8>, usize) {
        let mut out = input.to_vec();
        let mut n = 0;
        for (name, v) in self.0.iter() {
            if v.is_empty() {
                continue;
            }
            let mut res = Vec::new();
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(v) {
                    res.extend_from_slice(format!("[REDACTED:{name}]").as_bytes());
                    i += v.len();
                    n += 1;
                } else {
                    res.push(out[i]);
                    i += 1;
                }
            }
            out = res;
        }
        (out, n)
    }
    pub fn stream(&self) -> RedactStream {
        RedactStream {
            r: self.clone(),
            buf: Vec::new(),
            n: 0,
        }
    }
}
pub struct RedactStream {
    r: Redactor,
    buf: Vec<u8>,
    n: usize,
}
impl RedactStream {
    pub fn push(&mut self, chunk: &[u8], _out: &mut Vec<u8>) {
        self.buf.extend_from_slice(chunk);
    }
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let (o, n) = self.r.redact(&self.buf);
        self.n += n;
        out.extend_from_slice(&o);
        self.buf.clear();
    }
    pub fn redactions(&self) -> usize {
        self.n
    }
}
