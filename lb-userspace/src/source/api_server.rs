//! The API server's direct address (`--api-server`), used before anything
//! else: where this agent replaces kube-proxy, the in-cluster address is the
//! `kubernetes` Service's cluster IP, which only this agent serves. A node
//! that boots without pinned maps could not reach it, so would never program
//! anything (kube-proxy avoids that with a kubeconfig naming the control
//! plane, Cilium with `k8sServiceHost`/`k8sServicePort`).

use anyhow::{bail, Context, Result};
use http::Uri;

/// The environment variable Kubernetes sets in every pod to the
/// `kubernetes` Service's cluster IP (the in-cluster config's host).
pub const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// The API server URL of an `--api-server` value: `host:port`, `[v6]:port`
/// or a full `https://` (or, for test beds, `http://`) URL without a path.
/// An empty value means "not given" (`None`), so a `ConfigMap` key can leave
/// it unset.
pub fn parse(value: &str) -> Result<Option<Uri>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let full = if value.contains("://") {
        value.to_string()
    } else {
        format!("https://{value}")
    };
    let uri: Uri = full
        .parse()
        .with_context(|| format!("--api-server {value:?} is not host:port or a URL"))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => bail!("--api-server {value:?}: the scheme must be https (or http)"),
    }
    let Some(authority) = uri.authority() else {
        bail!("--api-server {value:?} names no host");
    };
    if authority.port_u16().is_none() && !value.contains("://") {
        bail!(
            "--api-server {value:?} names no port: give host:port (the API server's, often 6443)"
        );
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--api-server {value:?}: give the server's address without a path");
    }
    Ok(Some(uri))
}

/// Whether the client would reach the API server through a Service address
/// that a balancer on this node has to serve: no `--api-server`, and the
/// server is the in-cluster host (`KUBERNETES_SERVICE_HOST`).
#[must_use]
pub fn through_service(server: &Uri, service_host: Option<&str>) -> bool {
    let Some(host) = service_host.filter(|h| !h.is_empty()) else {
        return false;
    };
    server
        .host()
        .is_some_and(|h| h.trim_start_matches('[').trim_end_matches(']') == host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_become_an_https_url() {
        let uri = parse("10.0.0.5:6443").unwrap().unwrap();
        assert_eq!(uri.to_string(), "https://10.0.0.5:6443/");
        let uri = parse(" api.example.internal:443 ").unwrap().unwrap();
        assert_eq!(uri.host(), Some("api.example.internal"));
        let uri = parse("[fd00::5]:6443").unwrap().unwrap();
        assert_eq!(uri.host(), Some("[fd00::5]"));
        assert_eq!(uri.port_u16(), Some(6443));
    }

    #[test]
    fn urls_keep_their_scheme() {
        assert_eq!(
            parse("http://192.168.50.12:8080")
                .unwrap()
                .unwrap()
                .scheme_str(),
            Some("http")
        );
        // A URL's scheme implies its port.
        assert!(parse("https://api.example.internal").unwrap().is_some());
    }

    #[test]
    fn empty_means_not_given() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("  ").unwrap().is_none());
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for bad in [
            "10.0.0.5",
            "ftp://10.0.0.5:21",
            "https://10.0.0.5:6443/api",
            "https://10.0.0.5:6443/?x=1",
            "10.0.0.5:notaport",
            "https://",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("--api-server"), "{bad}: {err}");
        }
        let err = parse("10.0.0.5").unwrap_err().to_string();
        assert!(err.contains("names no port"), "{err}");
    }

    #[test]
    fn the_in_cluster_host_is_reached_through_a_service() {
        let server: Uri = "https://10.96.0.1:443".parse().unwrap();
        assert!(through_service(&server, Some("10.96.0.1")));
        assert!(!through_service(&server, Some("10.96.0.2")));
        assert!(!through_service(&server, None));
        assert!(!through_service(&server, Some("")));
        let v6: Uri = "https://[fd00:10:96::1]:443".parse().unwrap();
        assert!(through_service(&v6, Some("fd00:10:96::1")));
    }
}
