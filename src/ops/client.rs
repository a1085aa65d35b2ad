//! Pieces shared by the command-line HTTP clients (`kirimhook accounts` and the admin
//! commands). No I/O here.

use hyper::Uri;

/// Validates a base URL (`scheme://host[:port][/prefix]`) and returns it without a trailing
/// slash. `scheme` says whether the scheme is acceptable (and why not); the other reasons are
/// the same for every client.
pub fn base_url(
    text: &str,
    scheme: impl Fn(Option<&str>) -> Result<(), &'static str>,
) -> Result<String, &'static str> {
    let trimmed = text.trim().trim_end_matches('/');
    if trimmed.contains(['?', '#']) {
        return Err("a base URL has no query or fragment");
    }
    let uri: Uri = trimmed.parse().map_err(|_| "not a URL")?;
    scheme(uri.scheme_str())?;
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host");
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_only(scheme: Option<&str>) -> Result<(), &'static str> {
        match scheme {
            Some("http") => Ok(()),
            _ => Err("must start with http://"),
        }
    }

    #[test]
    fn trims_and_checks_every_part() {
        assert_eq!(
            base_url(" http://127.0.0.1:9090/ ", http_only),
            Ok("http://127.0.0.1:9090".to_owned())
        );
        assert_eq!(
            base_url("http://h/x?y", http_only),
            Err("a base URL has no query or fragment")
        );
        assert_eq!(
            base_url("http://h/#f", http_only),
            Err("a base URL has no query or fragment")
        );
        assert_eq!(
            base_url("https://h", http_only),
            Err("must start with http://")
        );
        assert_eq!(base_url("http:///path", http_only), Err("not a URL"));
        assert_eq!(base_url("a b", http_only), Err("not a URL"));
    }
}
