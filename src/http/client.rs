//! A client of the daemon's own HTTP API, for the commands that ask a running daemon (`status`,
//! `reindex`, `audit --repair`, `dead-letters --retry`, `prune`). Loopback, no TLS, no proxy.

use std::time::Duration;

/// How long connecting may take: a daemon that listens answers at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole request may take (a read-your-writes wait is bounded by the daemon itself).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The address a client reaches `http.listen` at: a wildcard listener through loopback.
fn base_url(listen: &str) -> String {
    let addr = listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    format!("http://{addr}")
}

/// `GET path` on the daemon: `(status, body)`, or `None` when nothing answers there.
pub async fn daemon_get(listen: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    daemon_request(listen, "GET", path, token, None).await
}

/// A request to the daemon with an optional JSON body: `(status, body)`, or `None` when nothing
/// answers there (not listening, refused, timed out).
pub async fn daemon_request(listen: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Option<(u16, String)> {
    let client = reqwest::Client::builder().no_proxy().connect_timeout(CONNECT_TIMEOUT).timeout(REQUEST_TIMEOUT).build().ok()?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
    let mut request = client.request(method, format!("{}{path}", base_url(listen)));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_string());
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_through_loopback() {
        assert_eq!(base_url("0.0.0.0:7700"), "http://127.0.0.1:7700");
        assert_eq!(base_url("[::]:7700"), "http://[::1]:7700");
        assert_eq!(base_url("127.0.0.1:9"), "http://127.0.0.1:9");
    }

    #[tokio::test]
    async fn nothing_listening_is_none() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(daemon_get(&format!("127.0.0.1:{port}"), "/v1/status", None).await, None);
    }

    #[tokio::test]
    async fn chunked_answers_and_tokens_reach_the_caller() {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/v1/x",
            get(|headers: axum::http::HeaderMap| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                // A streamed body goes out chunked.
                let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(auth), Ok(" and more".to_string())]);
                axum::body::Body::from_stream(chunks)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (status, body) = daemon_get(&addr, "/v1/x", Some("s3cret")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "Bearer s3cret and more"));
    }
}
