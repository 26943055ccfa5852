//! Server-Sent Events: a parser for the `text/event-stream` format (sans I/O, fed bytes as they arrive) and a
//! reader that follows a stream across reconnections, sending `Last-Event-ID` so nothing is seen twice.

use futures_util::StreamExt;
use std::time::Duration;

/// One event as the server sent it: its type (`message` when unnamed), data and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Splits a `text/event-stream` into events, whatever the chunking. Comments (keep-alives) are skipped.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    id: Option<String>,
}

impl Parser {
    /// Feeds bytes; answers the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    out.push(Event {
                        event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                        data: std::mem::take(&mut self.data).join("\n"),
                        id: self.id.clone(),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server answered with an error (`{"error": true, …}`): its status and message.
    #[error("{message}")]
    Refused { status: u16, code: String, message: String },
    /// The server could not be reached (after retrying).
    #[error("could not reach the server: {0}")]
    Unreachable(String),
}

/// Follows an event stream at `url` (a URL the generated client made), reconnecting after a dropped
/// connection with the last id seen until an `end` event arrives; `on_event` gets every event. A refusal
/// (4xx/5xx) ends it; an unreachable server is retried `retries` times, a second apart.
pub async fn follow(
    http: &reqwest::Client,
    url: &str,
    mut last_id: Option<String>,
    retries: u32,
    mut on_event: impl FnMut(&Event),
) -> Result<(), StreamError> {
    let mut failures = 0;
    loop {
        let mut request = http.get(url).header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                if failures > retries {
                    return Err(StreamError::Unreachable(e.to_string()));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            return Err(StreamError::Refused {
                status: status.as_u16(),
                code: body["code"].as_str().unwrap_or_default().to_owned(),
                message: body["message"]
                    .as_str()
                    .map_or_else(|| format!("the server answered {status}"), str::to_owned),
            });
        }
        failures = 0;
        let mut parser = Parser::default();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            for event in parser.feed(&chunk) {
                if event.id.is_some() {
                    last_id.clone_from(&event.id);
                }
                on_event(&event);
                if event.event == "end" {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_whole_whatever_the_chunking() {
        let text = b": keep-alive\n\nevent: build\ndata: {\"a\":1}\nid: 7/nix/store/x.drv\n\ndata: line one\ndata: line two\r\nid: 9\n\nevent: end\ndata: completed\n\n";
        let expected = vec![
            Event {
                event: "build".into(),
                data: "{\"a\":1}".into(),
                id: Some("7/nix/store/x.drv".into()),
            },
            Event {
                event: "message".into(),
                data: "line one\nline two".into(),
                id: Some("9".into()),
            },
            Event {
                event: "end".into(),
                data: "completed".into(),
                id: Some("9".into()),
            },
        ];
        for size in [1, 2, 5, 1000] {
            let mut parser = Parser::default();
            let got: Vec<Event> = text.chunks(size).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(got, expected, "chunks of {size}");
        }
    }
}
