//! The HTTP pieces both of the proxy's paths use (plain HTTP and requests to a bound host):
//! the body type, the proxy's own answers, and where a placeholder travels in a request head,
//! HTTP Basic credentials included.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use memchr::memmem;
use zeroize::Zeroizing;

use super::Binding;
use super::placeholder::swap_all;

/// An error of a body passed through the proxy.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A body passed through the proxy.
pub(super) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Headers meant for the proxy, never forwarded.
pub(super) const PROXY_HEADERS: &[&str] = &["proxy-authorization", "proxy-connection"];

/// The proxy's own plain-text answer (`msg` and a newline) with `status`.
pub(super) fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

/// Whether the placeholder appears in the request line or a header, as it is or inside an
/// HTTP Basic credential (`Authorization: Basic base64(user:password)`).
pub(super) fn carries(parts: &hyper::http::request::Parts, placeholder: &str) -> bool {
    memmem::find(parts.uri.to_string().as_bytes(), placeholder.as_bytes()).is_some()
        || fields_carry(&parts.headers, placeholder)
}

/// Whether a header or trailer field holds the placeholder, as it is or inside an HTTP Basic
/// credential.
pub(super) fn fields_carry(fields: &hyper::HeaderMap, placeholder: &str) -> bool {
    let p = placeholder.as_bytes();
    fields.values().any(|v| {
        memmem::find(v.as_bytes(), p).is_some()
            || basic_credential(v).is_some_and(|c| memmem::find(&c, p).is_some())
    })
}

/// The decoded `user:password` of an HTTP Basic credential (`Basic base64`, RFC 7617; the
/// scheme's name in any case), or `None` for any other header value.
fn basic_credential(v: &HeaderValue) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let b = v.as_bytes();
    let scheme = b.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let rest = b.get(6..)?.trim_ascii();
    base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .map(Zeroizing::new)
}

/// `v` with each placeholder of `here` swapped for its value inside an HTTP Basic credential
/// (decoded, swapped, encoded again: the same length, since a placeholder has its value's),
/// or `None` when `v` is no Basic credential holding one. `used[i]` is set for each `here[i]`
/// swapped (`used` is as long as `here`).
pub(super) fn swap_in_basic(
    v: &HeaderValue,
    here: &[&Binding],
    used: &mut [bool],
) -> Option<HeaderValue> {
    use base64::Engine as _;
    let mut cred = basic_credential(v)?;
    let mut changed = false;
    for (b, u) in here.iter().zip(used.iter_mut()) {
        if let Some(x) = swap_all(&cred, b.placeholder.as_bytes(), &b.value) {
            cred = Zeroizing::new(x);
            changed = true;
            *u = true;
        }
    }
    if !changed {
        return None;
    }
    let encoded = Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&*cred)
    ));
    let mut n = HeaderValue::from_str(&encoded).ok()?;
    n.set_sensitive(true);
    Some(n)
}

/// The destinations a variable is bound to, as shown.
pub(super) fn shown_dests(b: &Binding) -> String {
    b.dests
        .iter()
        .map(super::Dest::shown)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use base64::Engine as _;
    use hyper::Request;

    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn a_placeholder_inside_basic_is_seen_and_swapped_for_its_value_only() {
        let value = format!("v{}", "7".repeat(20));
        let placeholder = super::super::placeholder::placeholder(&value).unwrap();
        let b = Binding {
            shown: "API_TOKEN".into(),
            placeholder: placeholder.clone(),
            value: Zeroizing::new(value.clone().into_bytes()),
            dests: Vec::new(),
            bound_in: Default::default(),
        };
        let basic =
            HeaderValue::from_str(&format!("Basic {}", b64(&format!("me:{placeholder}")))).unwrap();
        let req = Request::get("https://api.example/")
            .header("authorization", basic.clone())
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert!(carries(&parts, &placeholder), "seen inside base64");
        let lower =
            HeaderValue::from_str(&format!("basic {}", b64(&format!("{placeholder}:x")))).unwrap();
        assert!(basic_credential(&lower).is_some(), "the scheme in any case");
        let mut used = [false];
        let swapped = swap_in_basic(&basic, &[&b], &mut used).unwrap();
        assert_eq!(used, [true]);
        assert_eq!(
            swapped.to_str().unwrap(),
            format!("Basic {}", b64(&format!("me:{value}")))
        );
        assert_eq!(swapped.len(), basic.len());
        // Not a Basic credential, or one without the placeholder: left alone.
        let other = HeaderValue::from_str(&format!("Basic {}", b64("me:other"))).unwrap();
        let mut used = [false];
        assert!(swap_in_basic(&other, &[&b], &mut used).is_none());
        assert_eq!(used, [false]);
        let bearer = HeaderValue::from_str(&format!("Bearer {}", b64(&placeholder))).unwrap();
        assert!(basic_credential(&bearer).is_none());
    }
}
