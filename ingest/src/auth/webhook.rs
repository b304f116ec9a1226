//! The `on_publish` / `on_publish_done` HTTP hooks, nginx-rtmp style.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, LOCATION};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oxcast_crds::WebhookAuth;

use super::{AuthError, Decision, PublishRequest};
use crate::stream_key::StreamKey;

pub(crate) type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub struct Webhook {
    url: hyper::Uri,
    done_url: Option<hyper::Uri>,
    timeout: Duration,
    client: HttpsClient,
}

pub(crate) fn parse_url(url: &str) -> Result<hyper::Uri, AuthError> {
    let uri: hyper::Uri =
        url.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| AuthError::WebhookUrl {
                url: url.to_string(),
                message: e.to_string(),
            })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => Ok(uri),
        _ => Err(AuthError::WebhookUrl {
            url: url.to_string(),
            message: "must start with http:// or https://".into(),
        }),
    }
}

fn form(call: &str, r: &PublishRequest) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    f.append_pair("call", call)
        .append_pair("addr", &r.addr.ip().to_string())
        .append_pair("clientid", &r.client_id.to_string())
        .append_pair("app", &r.app)
        .append_pair("name", &r.name)
        .append_pair("tcUrl", &r.tc_url);
    for (k, v) in &r.args {
        f.append_pair(k, v);
    }
    f.finish()
}

/// The stream name a 3xx `Location` names: the value itself, or the last
/// path segment when it is a URL (`rtmp://host/app/name`).
fn location_name(location: &str) -> &str {
    if location.contains("://") {
        location.rsplit('/').next().unwrap_or_default()
    } else {
        location
    }
}

/// The HTTP(S) client webhooks are called with (also the key-delivery
/// webhook of the HTTP role).
pub(crate) fn https_client() -> Result<HttpsClient, AuthError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(AuthError::Tls)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

impl Webhook {
    pub fn new(settings: &WebhookAuth) -> Result<Self, AuthError> {
        let url = parse_url(&settings.url)?;
        let done_url = settings
            .on_publish_done_url
            .as_deref()
            .map(parse_url)
            .transpose()?;
        let client = https_client()?;
        Ok(Self {
            url,
            done_url,
            timeout: settings.timeout.get(),
            client,
        })
    }

    async fn post(
        client: &HttpsClient,
        url: &hyper::Uri,
        body: String,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        client.request(request).await.map_err(|e| e.to_string())
    }

    pub async fn on_publish(&self, request: &PublishRequest) -> Decision {
        let call = Self::post(&self.client, &self.url, form("publish", request));
        let response = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                return Decision::Reject(format!(
                    "webhook did not answer within {:?}",
                    self.timeout
                ))
            }
            Ok(Err(e)) => return Decision::Reject(format!("webhook unreachable: {e}")),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Drain the body so the connection can be reused; its content is unused.
        let _ = tokio::time::timeout(self.timeout, response.into_body().collect()).await;
        if status.is_success() {
            return match StreamKey::parse(&request.name) {
                Ok(key) => Decision::Accept(key),
                Err(e) => Decision::Reject(e.to_string()),
            };
        }
        if status.is_redirection() {
            return match location.as_deref().map(location_name) {
                Some(name) => match StreamKey::parse(name) {
                    Ok(key) => Decision::Accept(key),
                    Err(e) => Decision::Reject(format!(
                        "webhook renamed the stream to an invalid name: {e}"
                    )),
                },
                None => Decision::Reject(format!("webhook answered {status} without a Location")),
            };
        }
        Decision::Reject(format!("webhook answered {status}"))
    }

    pub fn on_publish_done(&self, request: PublishRequest) {
        let Some(url) = self.done_url.clone() else {
            return;
        };
        let client = self.client.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let body = form("publish_done", &request);
            match tokio::time::timeout(timeout, Self::post(&client, &url, body)).await {
                Ok(Ok(r)) => {
                    tracing::debug!(status = %r.status(), name = %request.name, "publish_done delivered")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, name = %request.name, "publish_done webhook failed")
                }
                Err(_) => tracing::warn!(name = %request.name, "publish_done webhook timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_carries_nginx_rtmp_fields_and_args() {
        let r = PublishRequest {
            addr: "10.1.2.3:5555".parse().unwrap(),
            client_id: 7,
            app: "app".into(),
            name: "sec ret".into(),
            tc_url: "rtmp://h/app".into(),
            args: vec![("token".into(), "a&b".into())],
        };
        assert_eq!(
            form("publish", &r),
            "call=publish&addr=10.1.2.3&clientid=7&app=app&name=sec+ret&tcUrl=rtmp%3A%2F%2Fh%2Fapp&token=a%26b"
        );
    }

    #[test]
    fn location_may_be_a_name_or_a_url() {
        assert_eq!(location_name("alice"), "alice");
        assert_eq!(location_name("rtmp://other/app/bob"), "bob");
    }

    #[test]
    fn refuses_non_http_urls() {
        let s = WebhookAuth {
            url: "ftp://x/y".into(),
            ..WebhookAuth::default()
        };
        assert!(Webhook::new(&s).is_err());
    }
}
