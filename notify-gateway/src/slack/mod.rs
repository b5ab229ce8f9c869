//! The Slack adapter: Socket Mode (or the Events API over HTTP) in, the Web API with Block Kit
//! out.
//!
//! What it does: [`Slack`] implements [`Channel`]. Inbound, by default over **Socket Mode**
//! (no inbound port): `apps.connections.open` with the app-level `xapp-` token gives a WSS URL;
//! [`Slack::poll`](Channel::poll) dials it (again after a `disconnect` frame, a close or an
//! error), skips `hello`, and turns `events_api` / `interactive` envelopes into events
//! ([`inbound`]). A push platform numbers nothing, so the adapter numbers its events itself,
//! starting after the cursor the gateway persisted. An envelope is **acknowledged
//! (`{"envelope_id":…}`) only in [`Channel::confirm`]**, that is once the gateway has published
//! it and JetStream acknowledged it (or refused and audited it): an envelope the gateway did
//! not secure is redelivered by Slack on the next connection, and its re-publish carries the
//! same `Nats-Msg-Id` (`slack-<event_id>`, `slack-<trigger_id>`), so JetStream drops it. A
//! redelivery of an envelope already confirmed in this process is acknowledged at once and
//! not returned again. With `events_listen` configured the same events come from the Events
//! API / interactivity endpoint instead ([`events_api`]; signature checked before parsing,
//! answered 200 only after `confirm`).
//!
//! Outbound: `chat.postMessage` and `chat.update` with Block Kit ([`render`]): the text in
//! `mrkdwn` sections, the buttons in one actions block whose `value`s are the protocol's
//! opaque payloads; an edit without buttons removes them. `Delivered.message_id` is the
//! message `ts`. Failures are classified by [`web_api::classify`].
//!
//! What it does not do: no channels or groups (only direct messages are private, so the
//! inbound decision skips everything else), no slash commands, files, threads or app home.
//! [`Channel::answer_press`] is a no-op: on Slack the envelope acknowledgement is the answer
//! to a press, and a refused press gets no notification (it is audited). Tokens are held in
//! [`SlackToken`] and never logged; the Socket Mode URL (it carries a connection ticket) is
//! never logged either.
//!
//! Why not slack-morphism's Socket Mode listener: in 2.31.1 it sends the acknowledgement as soon
//! as the callback returns (the callback would have to block until `confirm`, on state reached
//! through plain `fn` pointers), it never acknowledges a frame its strict models cannot parse
//! (Slack would redeliver it until it gives up), and it logs every frame's body, user text
//! included, at trace level. Its models serve as an independent check in `tests/slack.rs`.

pub mod events_api;
pub mod inbound;
pub mod render;
pub mod signing;
pub mod web_api;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use protocol::ChannelName;
use protocol::message::{OutboundMessage, PlanProposal};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use web_api::{SLACK_API_URL, SlackToken, WebApi};

use crate::channel::{Channel, Delivered, DeliveryError, InboundEvent, InboundKind, Rendered};
use inbound::Frame;

/// How many confirmed dedup ids are remembered to acknowledge a redelivery at once.
const REMEMBERED: usize = 4096;
/// How long dialling the Socket Mode WebSocket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a poll waits for more envelopes once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// The least time between two Socket Mode connections (a connection that keeps closing at once
/// must not turn into a tight loop of `apps.connections.open` calls).
const RECONNECT_GAP: Duration = Duration::from_secs(1);
/// The largest Socket Mode message accepted (Slack's envelopes are a few KiB; a block_actions
/// payload with a full message, tens of KiB).
const MAX_FRAME: usize = 1024 * 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How one pending event is acknowledged once confirmed.
#[derive(Debug)]
enum Ack {
    /// A Socket Mode envelope, on the connection it came in on (if that is still open).
    Envelope {
        envelope_id: String,
        connection: u64,
    },
    /// An HTTP request waiting for its answer.
    Http(oneshot::Sender<()>),
}

/// One event from the Events API endpoint, with the way to answer its request.
#[derive(Debug)]
pub(crate) struct Pushed {
    pub(crate) dedup_id: String,
    pub(crate) kind: InboundKind,
    pub(crate) answer: oneshot::Sender<()>,
}

/// Where events come from.
#[derive(Debug)]
enum Source {
    /// Socket Mode with this app-level token.
    SocketMode { app_token: SlackToken },
    /// The Events API endpoint's queue (the endpoint task stops when the receiver drops).
    EventsApi {
        queue: mpsc::Receiver<Pushed>,
        _endpoint: events_api::Endpoint,
    },
}

#[derive(Debug, Default)]
struct Inbox {
    /// Boxed: the WebSocket state is large and the channel is moved into long-lived futures.
    socket: Option<Box<Socket>>,
    /// Counts connections, so an ack goes only on the connection its envelope came in on.
    connection: u64,
    /// When the last connection was opened.
    connected_at: Option<tokio::time::Instant>,
    /// The cursor of the last event numbered (`None` before the first poll).
    last: Option<u64>,
    pending: BTreeMap<u64, (String, Ack)>,
    confirmed: HashSet<String>,
    confirmed_order: VecDeque<String>,
}

impl Inbox {
    fn remember(&mut self, dedup_id: String) {
        if self.confirmed.insert(dedup_id.clone()) {
            self.confirmed_order.push_back(dedup_id);
        }
        while self.confirmed_order.len() > REMEMBERED {
            if let Some(old) = self.confirmed_order.pop_front() {
                self.confirmed.remove(&old);
            }
        }
    }
}

/// How the Slack channel is set up.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// The bot token (`xoxb-`), for the Web API.
    pub bot_token: SlackToken,
    /// The Web API base (default [`SLACK_API_URL`]).
    pub api_url: String,
    /// The only workspace accepted, if set.
    pub team_id: Option<String>,
    /// How long one poll waits for an envelope before answering empty.
    pub poll_wait: Duration,
}

/// The Slack channel.
#[derive(Debug)]
pub struct Slack {
    name: ChannelName,
    api: WebApi,
    bot_token: SlackToken,
    team_id: Option<String>,
    poll_wait: Duration,
    source: Mutex<Source>,
    inbox: Mutex<Inbox>,
}

impl Slack {
    /// A Socket Mode channel: events come over a WebSocket opened with `app_token` (`xapp-`).
    pub fn socket_mode(
        name: ChannelName,
        settings: SlackSettings,
        app_token: SlackToken,
    ) -> Result<Slack, DeliveryError> {
        Self::with_source(name, settings, Source::SocketMode { app_token })
    }

    /// An Events API channel: events come from `endpoint` (see [`events_api::Endpoint::bind`]).
    pub fn events_api(
        name: ChannelName,
        settings: SlackSettings,
        endpoint: events_api::Endpoint,
    ) -> Result<Slack, DeliveryError> {
        let queue = endpoint.take_queue();
        let Some(queue) = queue else {
            return Err(DeliveryError::Permanent(
                "the Events API endpoint is already in use".to_owned(),
            ));
        };
        Self::with_source(
            name,
            settings,
            Source::EventsApi {
                queue,
                _endpoint: endpoint,
            },
        )
    }

    fn with_source(
        name: ChannelName,
        settings: SlackSettings,
        source: Source,
    ) -> Result<Slack, DeliveryError> {
        Ok(Slack {
            name,
            api: WebApi::new(&settings.api_url)?,
            bot_token: settings.bot_token,
            team_id: settings.team_id,
            poll_wait: settings.poll_wait,
            source: Mutex::new(source),
            inbox: Mutex::new(Inbox::default()),
        })
    }

    /// `auth.test` with the bot token: the bot's user id, to check the token at start.
    pub async fn auth_test(&self) -> Result<String, DeliveryError> {
        let answer = self.api.call(&self.bot_token, "auth.test", None).await?;
        Ok(answer
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    async fn connect(&self, app_token: &SlackToken) -> Result<Box<Socket>, DeliveryError> {
        let answer = self
            .api
            .call(app_token, "apps.connections.open", None)
            .await?;
        let Some(url) = answer.get("url").and_then(Value::as_str) else {
            return Err(DeliveryError::Transient(
                "apps.connections.open: no url in the answer".to_owned(),
            ));
        };
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            return Err(DeliveryError::Permanent(
                "apps.connections.open: not a WebSocket url".to_owned(),
            ));
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let dialled = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Box::pin(tokio_tungstenite::connect_async_with_config(
                url,
                Some(config),
                true,
            )),
        )
        .await
        .map_err(|_elapsed| {
            DeliveryError::Transient("Socket Mode: connecting timed out".to_owned())
        })?;
        match dialled {
            Ok((socket, _response)) => Ok(Box::new(socket)),
            // The error may quote the URL, which carries a connection ticket: not kept.
            Err(_e) => Err(DeliveryError::Transient(
                "Socket Mode: cannot open the WebSocket".to_owned(),
            )),
        }
    }

    /// Numbers a new event (or acknowledges a redelivery already confirmed, returning `None`).
    async fn admit(
        inbox: &mut Inbox,
        dedup_id: String,
        kind: InboundKind,
        ack: Ack,
    ) -> Option<InboundEvent> {
        if inbox.confirmed.contains(&dedup_id) {
            tracing::info!(
                code = "slack_redelivery",
                "an event already handled was redelivered; acknowledged again"
            );
            send_ack(inbox, ack).await;
            return None;
        }
        let cursor = inbox.last.unwrap_or(0).saturating_add(1);
        inbox.last = Some(cursor);
        inbox.pending.insert(cursor, (dedup_id.clone(), ack));
        Some(InboundEvent {
            cursor,
            dedup_id,
            kind,
        })
    }

    async fn poll_socket(
        &self,
        inbox: &mut Inbox,
        app_token: &SlackToken,
    ) -> Result<Vec<InboundEvent>, DeliveryError> {
        if inbox.socket.is_none() {
            if let Some(at) = inbox.connected_at {
                tokio::time::sleep_until(at + RECONNECT_GAP).await;
            }
            inbox.connected_at = Some(tokio::time::Instant::now());
            let socket = self.connect(app_token).await?;
            inbox.socket = Some(socket);
            inbox.connection = inbox.connection.saturating_add(1);
        }
        let mut deadline = tokio::time::Instant::now() + self.poll_wait;
        let mut events = Vec::new();
        while let Some(socket) = inbox.socket.as_mut() {
            let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
                Err(_elapsed) => break,
                Ok(Some(Ok(frame))) => frame,
                Ok(None | Some(Err(_))) => {
                    tracing::info!(
                        code = "slack_socket_closed",
                        "Socket Mode connection lost; reconnecting"
                    );
                    inbox.socket = None;
                    break;
                }
            };
            let text = match frame {
                Message::Text(t) => t,
                Message::Close(_) => {
                    inbox.socket = None;
                    break;
                }
                _ => continue,
            };
            match inbound::parse_frame(text.as_str(), self.team_id.as_deref()) {
                Frame::Hello | Frame::Other => {}
                Frame::Disconnect { reason } => {
                    tracing::info!(
                        code = "slack_disconnect",
                        reason,
                        "Slack asked to reconnect"
                    );
                    if let Some(mut s) = inbox.socket.take() {
                        let closing = (*s).close(None);
                        let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
                    }
                    break;
                }
                Frame::Envelope {
                    envelope_id,
                    dedup_id,
                    kind,
                } => {
                    let ack = Ack::Envelope {
                        envelope_id,
                        connection: inbox.connection,
                    };
                    if let Some(e) = Self::admit(inbox, dedup_id, kind, ack).await {
                        events.push(e);
                        deadline = deadline.min(tokio::time::Instant::now() + BATCH_WAIT);
                    }
                }
            }
        }
        Ok(events)
    }

    async fn poll_queue(
        &self,
        inbox: &mut Inbox,
        queue: &mut mpsc::Receiver<Pushed>,
    ) -> Result<Vec<InboundEvent>, DeliveryError> {
        let mut events = Vec::new();
        let first = tokio::time::timeout(self.poll_wait, queue.recv()).await;
        let mut next = match first {
            Err(_elapsed) => return Ok(events),
            Ok(None) => {
                return Err(DeliveryError::Permanent(
                    "the Events API endpoint stopped".to_owned(),
                ));
            }
            Ok(Some(p)) => Some(p),
        };
        while let Some(p) = next {
            if let Some(e) = Self::admit(inbox, p.dedup_id, p.kind, Ack::Http(p.answer)).await {
                events.push(e);
            }
            next = queue.try_recv().ok();
        }
        Ok(events)
    }
}

async fn send_ack(inbox: &mut Inbox, ack: Ack) {
    match ack {
        Ack::Http(answer) => {
            let _ = answer.send(());
        }
        Ack::Envelope {
            envelope_id,
            connection,
        } => {
            if connection != inbox.connection {
                // Its connection is gone; Slack redelivers it and it is acknowledged then.
                return;
            }
            if let Some(socket) = inbox.socket.as_mut() {
                let frame = json!({ "envelope_id": envelope_id }).to_string();
                if socket.send(Message::Text(frame.into())).await.is_err() {
                    inbox.socket = None;
                }
            }
        }
    }
}

impl Channel for Slack {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    async fn poll(&self, after: Option<u64>) -> Result<Vec<InboundEvent>, DeliveryError> {
        let mut inbox = self.inbox.lock().await;
        if inbox.last.is_none() {
            inbox.last = Some(after.unwrap_or(0));
        }
        let mut source = self.source.lock().await;
        match &mut *source {
            Source::SocketMode { app_token } => {
                let token = app_token.clone();
                drop(source);
                self.poll_socket(&mut inbox, &token).await
            }
            Source::EventsApi { queue, .. } => self.poll_queue(&mut inbox, queue).await,
        }
    }

    async fn confirm(&self, cursor: u64) {
        let mut inbox = self.inbox.lock().await;
        let later = inbox.pending.split_off(&cursor.saturating_add(1));
        let done = std::mem::replace(&mut inbox.pending, later);
        for (_cursor, (dedup_id, ack)) in done {
            send_ack(&mut inbox, ack).await;
            inbox.remember(dedup_id);
        }
    }

    async fn answer_press(
        &self,
        _press_id: &str,
        _text: Option<&str>,
    ) -> Result<(), DeliveryError> {
        // The envelope (or HTTP) acknowledgement sent by `confirm` is Slack's answer to a press.
        Ok(())
    }

    async fn post(&self, chat: &str, message: &Rendered) -> Result<Delivered, DeliveryError> {
        let body = json!({
            "channel": chat,
            "text": render::fallback_text(message),
            "blocks": render::blocks(message),
            "unfurl_links": false,
            "unfurl_media": false,
        });
        let answer = self
            .api
            .call(&self.bot_token, "chat.postMessage", Some(&body))
            .await?;
        let ts = answer.get("ts").and_then(Value::as_str);
        let channel = answer
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or(chat);
        match ts {
            Some(ts) => Ok(Delivered {
                chat_id: channel.to_owned(),
                message_id: ts.to_owned(),
            }),
            None => Err(DeliveryError::Transient(
                "chat.postMessage: no ts in the answer".to_owned(),
            )),
        }
    }

    async fn edit(&self, target: &Delivered, message: &Rendered) -> Result<(), DeliveryError> {
        let body = json!({
            "channel": target.chat_id,
            "ts": target.message_id,
            "text": render::fallback_text(message),
            "blocks": render::blocks(message),
        });
        self.api
            .call(&self.bot_token, "chat.update", Some(&body))
            .await
            .map(|_| ())
    }

    fn render_plan(&self, plan: &PlanProposal) -> Rendered {
        render::render_plan_mrkdwn(plan)
    }

    fn render_message(&self, message: &OutboundMessage) -> Rendered {
        render::render_message_mrkdwn(message)
    }
}
