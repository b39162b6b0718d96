//! The answers the gate writes itself on the proxy path: refusals, the `/_session` API (its
//! body read within [`api::MAX_BODY`]), the redirect to https, and the status label the
//! request metrics use.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::target::host_name;
use super::{Ctx, Proxy};
use crate::api::{self, ApiRequest};
use crate::reject::Reject;
use crate::response::Response;
use crate::settings::Settings;

/// Writes a whole response, keeping the connection reusable; `hsts` is the
/// `Strict-Transport-Security` of a TLS listener.
pub(super) async fn respond(
    session: &mut Session,
    hsts: Option<&http::HeaderValue>,
    resp: Response,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (k, v) in resp.headers {
        h.append_header(k, v)?;
    }
    if let Some(v) = hsts {
        h.insert_header(header::STRICT_TRANSPORT_SECURITY, v.clone())?;
    }
    h.insert_header(header::CONTENT_LENGTH, resp.body.len())?;
    let empty = resp.body.is_empty();
    session.write_response_header(Box::new(h), empty).await?;
    if !empty {
        session
            .write_response_body(Some(Bytes::from(resp.body)), true)
            .await?;
    }
    Ok(())
}

impl Proxy {
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        r: Reject,
    ) -> pingora::Result<bool> {
        ctx.responded = Some(r.status());
        let resp = Response::reject(&r);
        ctx.reject = Some(r);
        respond(session, ctx.hsts.as_ref(), resp).await?;
        Ok(true)
    }

    /// `tls.redirect_plain`: 308 to the same path and query on https, at the
    /// Host's name and the first TLS port.
    pub(super) async fn redirect_to_https(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        port: u16,
    ) -> pingora::Result<bool> {
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        let Some(name) = host.and_then(host_name) else {
            let why = "a redirect to https needs a valid Host".into();
            return self.refuse(session, ctx, Reject::BadRequest(why)).await;
        };
        let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = if port == 443 {
            format!("https://{name}{pq}")
        } else {
            format!("https://{name}:{port}{pq}")
        };
        let Ok(location) = http::HeaderValue::from_str(&location) else {
            let why = "a redirect to https needs a valid target".into();
            return self.refuse(session, ctx, Reject::BadRequest(why)).await;
        };
        ctx.responded = Some(308);
        let resp = Response {
            status: 308,
            headers: vec![(header::LOCATION, location)],
            body: Vec::new(),
        };
        respond(session, None, resp).await?;
        Ok(true)
    }

    /// Reads a `/_session` body, bounded by [`api::MAX_BODY`].
    pub(super) async fn read_body(session: &mut Session) -> Result<Vec<u8>, Reject> {
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > api::MAX_BODY) {
            return Err(Reject::BodyTooLarge);
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > api::MAX_BODY {
                        return Err(Reject::BodyTooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read request body");
                    return Err(Reject::BadRequest("malformed request body".into()));
                }
            }
        }
    }

    pub(super) async fn serve_api(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        s: &Settings,
        path: &str,
    ) -> pingora::Result<bool> {
        let body = match Self::read_body(session).await {
            Ok(b) => b,
            Err(r) => return self.refuse(session, ctx, r).await,
        };
        let ip = ctx.client_ip();
        let scheme = ctx.scheme();
        let req = session.req_header();
        let method = req.method.clone();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let resp = api::handle(
            &self.gate,
            s,
            ApiRequest {
                method: &method,
                path,
                headers: &req.headers,
                body: &body,
                client_ip: ip,
                scheme,
                host,
            },
        )
        .await;
        ctx.responded = Some(resp.status);
        respond(session, ctx.hsts.as_ref(), resp).await?;
        Ok(true)
    }
}

/// The status as a metric label, without allocating for the common ones.
pub(super) fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    let s = match status {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        414 => "414",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return std::borrow::Cow::Owned(other.to_string()),
    };
    std::borrow::Cow::Borrowed(s)
}
