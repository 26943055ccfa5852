//! The worker's end of the `/proto` link: dials the server's WebSocket, sends `WorkerMessage`s and
//! receives `ServerMessage`s as JSON text frames, enforcing the protocol's frame size limit both ways.
//! (The server's end lives in the server app, on poem's WebSocket.)

use futures_util::{SinkExt, StreamExt};
use gradient_domain::proto::{self, MAX_FRAME_BYTES, ServerMessage, WorkerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server answered the upgrade with an HTTP status (e.g. 503 when it is full, with its Retry-After).
    #[error("the server refused the connection: HTTP {status}")]
    Refused { status: u16, retry_after_secs: Option<u64> },
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server sent something that is not a protocol message.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed; `reason` is the server's close reason, if any.
    #[error("connection closed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed { reason: Option<String> },
    #[error("link failed: {0}")]
    Io(String),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct LinkSender(futures_util::stream::SplitSink<Ws, Message>);
pub struct LinkReceiver(futures_util::stream::SplitStream<Ws>);

/// Connects to `url` (`ws://host:port/proto`). `wss://` is not supported by this build.
pub async fn connect(url: &str) -> Result<(LinkSender, LinkReceiver), LinkError> {
    if url.starts_with("wss://") {
        return Err(LinkError::Connect(
            "wss:// is not supported yet; use ws:// behind a TLS-terminating proxy".into(),
        ));
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    match tokio_tungstenite::connect_async_with_config(url, Some(config), false).await {
        Ok((ws, _)) => {
            let (tx, rx) = ws.split();
            Ok((LinkSender(tx), LinkReceiver(rx)))
        }
        Err(tungstenite::Error::Http(resp)) => {
            let retry_after_secs = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Err(LinkError::Refused {
                status: resp.status().as_u16(),
                retry_after_secs,
            })
        }
        Err(e) => Err(LinkError::Connect(e.to_string())),
    }
}

impl LinkSender {
    pub async fn send(&mut self, msg: &WorkerMessage) -> Result<(), LinkError> {
        let text = proto::encode(msg).map_err(|e| LinkError::Protocol(e.to_string()))?;
        self.0
            .send(Message::text(text))
            .await
            .map_err(|e| LinkError::Io(e.to_string()))
    }

    pub async fn close(mut self) {
        let _ = self.0.close().await;
    }
}

impl LinkReceiver {
    /// The next message; `Closed` when the server closed the link (with its reason).
    pub async fn recv(&mut self) -> Result<ServerMessage, LinkError> {
        loop {
            match self.0.next().await {
                None => return Err(LinkError::Closed { reason: None }),
                Some(Err(tungstenite::Error::ConnectionClosed)) => return Err(LinkError::Closed { reason: None }),
                Some(Err(e)) => return Err(LinkError::Io(e.to_string())),
                Some(Ok(Message::Text(t))) => {
                    return proto::decode_server(t.as_str()).map_err(|e| LinkError::Protocol(e.to_string()));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(LinkError::Closed {
                        reason: frame.map(|f| f.reason.to_string()),
                    });
                }
                Some(Ok(Message::Binary(_))) => return Err(LinkError::Protocol("binary frames are not used".into())),
                Some(Ok(_)) => continue,
            }
        }
    }
}
