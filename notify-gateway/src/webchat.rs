//! The web chat: a small token-protected page on a loopback address, for users with no chat
//! account. Channel name `web`; the user is `web:<user>` (config `[web] user`, default
//! `owner`), the conversation id is `web`.
//!
//! What it does: [`WebChat`] is the [`Channel`]: a push-based channel that numbers its events
//! itself. The HTTP side ([`http`]) checks a request (host, origin, token, limits, the same
//! default-deny decision the inbound loop makes) and queues it as an [`InboundEvent`]
//! (`web-<client id>` as the dedup id, so a browser retry is published once); the inbound loop
//! takes it through [`Channel::poll`], publishes it (or refuses a press of a button not shown)
//! and calls [`Channel::confirm`] / [`Channel::answer_press`], and only then does the HTTP
//! request get its answer (202, 409 for a refused press, 503 if it was not secured in time so
//! the page retries with the same client id). Outbound, `post` and `edit` write the rendered
//! message to the [`history::History`] table (durable before the outbound loop records the
//! delivery) and wake the page's long poll. Rendering ([`render`]) is plain text with buttons.
//! The token ([`token`]) lives in a file created 0600; the page URL carries it in the fragment.
//!
//! What it does not do: it listens on loopback only and serves one user; no cookies, no
//! sessions, no TLS (loopback), no external resources, no HTML from messages (the page sets
//! `textContent` only), no push notifications; it never logs the token.

pub mod history;
pub mod http;
pub mod render;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::ChannelName;
use protocol::message::{OutboundMessage, PlanProposal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::channel::{Channel, Delivered, DeliveryError, InboundEvent, InboundKind, Rendered};
use crate::inbound::Allowlist;
use history::History;

/// The web chat's one conversation id.
pub const CHAT_ID: &str = "web";
/// How many requests may wait for the inbound loop at once.
const QUEUE: usize = 64;
/// Most events one poll returns.
const POLL_BATCH: usize = 32;
/// How long one poll waits for a request.
const POLL_WAIT: Duration = Duration::from_secs(10);

/// How a queued request ended, as far as the inbound loop told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secured {
    /// Handled for good (published and acknowledged, or deliberately dropped).
    Done,
    /// A press refused because the message does not show that button.
    Refused,
}

/// A request waiting for the inbound loop.
#[derive(Debug)]
struct Submission {
    dedup_id: String,
    kind: InboundKind,
    done: oneshot::Sender<Secured>,
}

#[derive(Debug, Default)]
struct Numbering {
    /// The next cursor to hand out (None: no poll yet).
    next: Option<u64>,
    /// Texts waiting for `confirm`, by cursor.
    texts: BTreeMap<u64, oneshot::Sender<Secured>>,
    /// Presses waiting for `answer_press`, by press id.
    presses: HashMap<String, oneshot::Sender<Secured>>,
}

#[derive(Debug)]
struct Shared {
    name: ChannelName,
    user: String,
    history: History,
    queue: mpsc::Sender<Submission>,
    queued: tokio::sync::Mutex<mpsc::Receiver<Submission>>,
    numbering: Mutex<Numbering>,
    version: watch::Sender<u64>,
}

/// The web chat channel: a cheap clonable handle shared by the gateway loops and the HTTP
/// server.
#[derive(Debug, Clone)]
pub struct WebChat {
    shared: Arc<Shared>,
}

/// Why a request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Too many requests are waiting.
    Full,
}

impl WebChat {
    /// The channel for `user` (its platform id), keeping history in `history`.
    pub async fn new(
        name: ChannelName,
        user: &str,
        history: History,
    ) -> Result<WebChat, crate::store::StoreError> {
        let version = history.version().await?;
        let (queue, queued) = mpsc::channel(QUEUE);
        Ok(WebChat {
            shared: Arc::new(Shared {
                name,
                user: user.to_owned(),
                history,
                queue,
                queued: tokio::sync::Mutex::new(queued),
                numbering: Mutex::new(Numbering::default()),
                version: watch::Sender::new(version),
            }),
        })
    }

    /// The allowlist for this channel: its one user.
    pub fn allowlist(&self) -> Allowlist {
        Allowlist::new([self.shared.user.clone()])
    }

    /// The user's platform id.
    pub fn user(&self) -> &str {
        &self.shared.user
    }

    /// The history table.
    pub fn history(&self) -> &History {
        &self.shared.history
    }

    /// The latest history version, to wait on.
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// Marks the history as changed up to `version`.
    pub(crate) fn changed(&self, version: u64) {
        self.shared.version.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    /// Queues an event for the inbound loop; the receiver resolves once it is secured (and is
    /// dropped if the loop stops first).
    pub(crate) fn submit(
        &self,
        dedup_id: String,
        kind: InboundKind,
    ) -> Result<oneshot::Receiver<Secured>, QueueError> {
        let (done, secured) = oneshot::channel();
        self.shared
            .queue
            .try_send(Submission {
                dedup_id,
                kind,
                done,
            })
            .map_err(|_full_or_closed| QueueError::Full)?;
        Ok(secured)
    }

    /// Forgets a press nobody waits for any more.
    pub(crate) fn forget_press(&self, press_id: &str) {
        self.numbering().presses.remove(press_id);
    }

    fn numbering(&self) -> std::sync::MutexGuard<'_, Numbering> {
        self.shared
            .numbering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Channel for WebChat {
    fn name(&self) -> &ChannelName {
        &self.shared.name
    }

    async fn poll(&self, after: Option<u64>) -> Result<Vec<InboundEvent>, DeliveryError> {
        {
            // Number above the persisted cursor (and above anything handed out before).
            let mut n = self.numbering();
            let floor = after.map_or(1, |a| a.saturating_add(1));
            n.next = Some(n.next.map_or(floor, |next| next.max(floor)));
        }
        let mut queued = self.shared.queued.lock().await;
        let Ok(Some(first)) = tokio::time::timeout(POLL_WAIT, queued.recv()).await else {
            return Ok(Vec::new());
        };
        let mut batch = vec![first];
        while batch.len() < POLL_BATCH {
            match queued.try_recv() {
                Ok(s) => batch.push(s),
                Err(_empty) => break,
            }
        }
        drop(queued);
        let mut n = self.numbering();
        let mut events = Vec::with_capacity(batch.len());
        for s in batch {
            let cursor = n.next.unwrap_or(1);
            n.next = Some(cursor.saturating_add(1));
            match &s.kind {
                InboundKind::Button { press_id, .. } => {
                    n.presses.insert(press_id.clone(), s.done);
                }
                _ => {
                    n.texts.insert(cursor, s.done);
                }
            }
            events.push(InboundEvent {
                cursor,
                dedup_id: s.dedup_id,
                kind: s.kind,
            });
        }
        Ok(events)
    }

    async fn confirm(&self, cursor: u64) {
        let mut n = self.numbering();
        let later = n.texts.split_off(&cursor.saturating_add(1));
        let done = std::mem::replace(&mut n.texts, later);
        drop(n);
        for (_, waiter) in done {
            let _ = waiter.send(Secured::Done);
        }
    }

    async fn answer_press(&self, press_id: &str, text: Option<&str>) -> Result<(), DeliveryError> {
        let waiter = self.numbering().presses.remove(press_id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(if text.is_some() {
                Secured::Refused
            } else {
                Secured::Done
            });
        }
        Ok(())
    }

    async fn post(&self, chat_id: &str, message: &Rendered) -> Result<Delivered, DeliveryError> {
        if chat_id != CHAT_ID {
            return Err(DeliveryError::Permanent(
                "the web chat has one conversation, `web`".to_owned(),
            ));
        }
        let (id, version) = self
            .shared
            .history
            .post(&message.text, &message.buttons)
            .await
            .map_err(|e| DeliveryError::Transient(e.to_string()))?;
        self.changed(version);
        Ok(Delivered {
            chat_id: CHAT_ID.to_owned(),
            message_id: id,
        })
    }

    async fn edit(&self, target: &Delivered, message: &Rendered) -> Result<(), DeliveryError> {
        let version = self
            .shared
            .history
            .edit(&target.message_id, &message.text, &message.buttons)
            .await
            .map_err(|e| DeliveryError::Transient(e.to_string()))?;
        match version {
            Some(v) => {
                self.changed(v);
                Ok(())
            }
            None => Err(DeliveryError::Permanent(
                "no such web chat message".to_owned(),
            )),
        }
    }

    fn render_plan(&self, plan: &PlanProposal) -> Rendered {
        render::render_plan_text(plan)
    }

    fn render_message(&self, message: &OutboundMessage) -> Rendered {
        render::render_message_text(message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn text(id: &str) -> InboundKind {
        InboundKind::Text {
            sender: "owner".into(),
            chat_id: CHAT_ID.into(),
            private: true,
            message_id: id.into(),
            text: "hi".into(),
        }
    }

    #[tokio::test]
    async fn numbers_above_the_persisted_cursor_and_resolves_on_confirm() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("gw.sqlite")).unwrap();
        let web = WebChat::new(ChannelName::new("web").unwrap(), "owner", h)
            .await
            .unwrap();
        let mut a = web.submit("web-a".into(), text("a")).unwrap();
        let mut b = web.submit("web-b".into(), text("b")).unwrap();
        let events = web.poll(Some(41)).await.unwrap();
        let cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
        assert_eq!(cursors, [42, 43]);
        assert_eq!(events[0].dedup_id, "web-a");
        web.confirm(42).await;
        assert_eq!(a.try_recv().unwrap(), Secured::Done);
        assert!(b.try_recv().is_err(), "not yet");
        web.confirm(43).await;
        assert_eq!(b.try_recv().unwrap(), Secured::Done);
        // A later poll with an older cursor never reuses a number.
        let _c = web.submit("web-c".into(), text("c")).unwrap();
        assert_eq!(web.poll(Some(10)).await.unwrap()[0].cursor, 44);
    }

    #[tokio::test]
    async fn a_press_resolves_when_it_is_answered_refused_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("gw.sqlite")).unwrap();
        let web = WebChat::new(ChannelName::new("web").unwrap(), "owner", h)
            .await
            .unwrap();
        let press = |id: &str| InboundKind::Button {
            sender: "owner".into(),
            chat_id: Some(CHAT_ID.into()),
            private: true,
            message_id: Some("m1".into()),
            press_id: id.into(),
            payload: "ap:1".into(),
        };
        let mut ok = web.submit("web-p1".into(), press("p1")).unwrap();
        let mut refused = web.submit("web-p2".into(), press("p2")).unwrap();
        let mut gone = web.submit("web-p3".into(), press("p3")).unwrap();
        assert_eq!(web.poll(None).await.unwrap().len(), 3);
        // Confirming the cursor alone does not answer a press: the answer says how it ended.
        web.confirm(3).await;
        assert!(ok.try_recv().is_err());
        web.answer_press("p1", None).await.unwrap();
        web.answer_press("p2", Some("This button is no longer valid."))
            .await
            .unwrap();
        assert_eq!(ok.try_recv().unwrap(), Secured::Done);
        assert_eq!(refused.try_recv().unwrap(), Secured::Refused);
        // A press nobody waits for any more is forgotten; a late answer is harmless.
        web.forget_press("p3");
        assert!(gone.try_recv().is_err());
        web.answer_press("p3", None).await.unwrap();
        // Posts land in the one conversation only.
        let r = Rendered {
            text: "hi".into(),
            buttons: vec![],
        };
        let d = web.post(CHAT_ID, &r).await.unwrap();
        assert_eq!((d.chat_id.as_str(), d.message_id.as_str()), ("web", "m1"));
        assert_eq!(*web.versions().borrow(), 1);
        assert!(matches!(
            web.post("42", &r).await,
            Err(DeliveryError::Permanent(_))
        ));
        assert!(matches!(
            web.edit(
                &Delivered {
                    chat_id: CHAT_ID.into(),
                    message_id: "m9".into()
                },
                &r
            )
            .await,
            Err(DeliveryError::Permanent(_))
        ));
    }
}
