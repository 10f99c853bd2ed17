//! A local WebSocket echo service (the app behind a tunnel), and a visitor
//! that opens WebSocket connections through the server with any Host.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, accept_async_with_config, client_async_with_config};
use tokio_util::sync::CancellationToken;

/// Echoes every text and binary message back on its connection; answers
/// plain HTTP requests (no upgrade) with a 400 from the handshake.
pub struct WsEcho {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

/// Sends every text and binary message on `ws` back, until it closes.
pub(crate) async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => break,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// Up to 4 MiB messages each way: tests send up to 1 MiB.
pub(crate) fn config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20))
}

impl WsEcho {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        crate::accept_until(listener, shutdown.clone(), |stream| async move {
            if let Ok(ws) = accept_async_with_config(stream, Some(config())).await {
                echo(ws).await;
            }
        });
        WsEcho { addr, shutdown }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Opens a WebSocket to `path` on `host` through the server at `server`.
pub async fn connect(
    server: SocketAddr,
    host: &str,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{server}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("host", host.parse().expect("valid host"));
    let stream = TcpStream::connect(server).await?;
    let (ws, _) = client_async_with_config(request, stream, Some(config())).await?;
    Ok(ws)
}
