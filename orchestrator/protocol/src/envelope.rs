//! The versioned envelope every NATS message travels in, with strict, size-limited decoding.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, EncodeError};
use crate::id::{CorrelationId, MessageId, UnixMillis};
use crate::name::Principal;

/// The only envelope version this build speaks.
pub const ENVELOPE_VERSION: u16 = 1;

/// Largest envelope accepted or produced, in bytes. The NATS server's `max_payload` is the same
/// number, so the server refuses anything larger before it reaches a service.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// The subject families, one closed message enum each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `chat.in.<channel>`: [`crate::message::ChatIn`]
    ChatIn,
    /// `chat.decision.<channel>`: [`crate::message::ChatDecision`]
    ChatDecision,
    /// `chat.out.<channel>`: [`crate::message::ChatOut`]
    ChatOut,
    /// `plan.proposed.<channel>`: [`crate::message::PlanMessage`]
    PlanProposed,
    /// `cmd.<agent>`: [`crate::message::AgentRequest`]
    Command,
    /// The reply to a `cmd.<agent>` request: [`crate::message::AgentReply`]
    Reply,
    /// `status.<agent>`: [`crate::message::Status`]
    Status,
    /// `audit.<principal>`: [`crate::message::AuditEvent`]
    Audit,
    /// `alert.<agent>`: [`crate::message::AlertMessage`]
    Alert,
}

/// A message body: one closed enum per subject family.
pub trait Body: Serialize + DeserializeOwned {
    /// The family whose subjects carry this body.
    const FAMILY: Family;

    /// Rules the types cannot express (text lengths, list sizes). Called by [`Envelope::decode`]
    /// and [`Envelope::encode`].
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The envelope: version, ids, sender, time, body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<B> {
    /// Envelope version; always [`ENVELOPE_VERSION`].
    pub v: u16,
    /// Unique per message.
    pub id: MessageId,
    /// The user request this message belongs to.
    pub correlation_id: CorrelationId,
    /// Who sent it. Receivers check it against the subject, which NATS permissions bind to the
    /// sender's identity.
    pub sender: Principal,
    /// When it was sent.
    pub sent_at: UnixMillis,
    /// The body.
    pub body: B,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

impl<B: Body> Envelope<B> {
    /// A new envelope of the current version.
    pub fn new(
        id: MessageId,
        correlation_id: CorrelationId,
        sender: Principal,
        sent_at: UnixMillis,
        body: B,
    ) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            id,
            correlation_id,
            sender,
            sent_at,
            body,
        }
    }

    /// Decodes with the default size limit.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with_limit(bytes, MAX_ENVELOPE_BYTES)
    }

    /// Decodes strictly: the size is checked before any parsing, unknown fields are refused at
    /// every level, the version must be [`ENVELOPE_VERSION`], and the body must pass
    /// [`Body::validate`].
    pub fn decode_with_limit(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        // serde accepts a struct written as a JSON array; the wire format is objects only.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(DecodeError::Malformed(serde::de::Error::custom(
                "an envelope must be a JSON object",
            )));
        }
        let envelope: Self = match serde_json::from_slice(bytes) {
            Ok(e) => e,
            Err(e) => {
                // A message from a newer peer should say so, not look like garbage.
                if let Ok(probe) = serde_json::from_slice::<VersionProbe>(bytes)
                    && probe.v != u64::from(ENVELOPE_VERSION)
                {
                    return Err(DecodeError::UnsupportedVersion(probe.v));
                }
                return Err(DecodeError::Malformed(e));
            }
        };
        if envelope.v != ENVELOPE_VERSION {
            return Err(DecodeError::UnsupportedVersion(u64::from(envelope.v)));
        }
        envelope.body.validate().map_err(DecodeError::Invalid)?;
        Ok(envelope)
    }

    /// Encodes, refusing a body that breaks its rules or an envelope over the size limit.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if let Err(reason) = self.body.validate() {
            return Err(EncodeError::Serialize(serde::ser::Error::custom(reason)));
        }
        let bytes = serde_json::to_vec(self).map_err(EncodeError::Serialize)?;
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EncodeError::TooLarge {
                len: bytes.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        Ok(bytes)
    }
}

/// Checks a text field's length in bytes and refuses control characters other than newline
/// and tab.
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes; the limit is {max}",
            value.len()
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!("{field} holds control characters"));
    }
    Ok(())
}

/// Checks a list's length.
pub(crate) fn check_len<T>(field: &str, value: &[T], max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} has {} entries; the limit is {max}",
            value.len()
        ));
    }
    Ok(())
}
