//! Validated names: the only way a string becomes part of a subject, a token or an identity.
//!
//! Every type here has a validating constructor and no other. A name that appears in a NATS
//! subject can never contain `.`, `*`, `>`, whitespace or control characters, whatever the
//! caller passes in.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::NameError;

/// Longest principal (service or agent) name, in bytes.
pub const MAX_PRINCIPAL_LEN: usize = 32;
/// Longest action name, in bytes.
pub const MAX_ACTION_LEN: usize = 64;
/// Longest chat user reference (`<channel>:<platform id>`), in bytes.
pub const MAX_CHAT_USER_LEN: usize = 128;

/// Names that belong to the platform's own services. No agent may take one, so an agent can
/// never publish on, say, `audit.orchestrator` by being named `orchestrator`.
pub const RESERVED_NAMES: &[&str] = &[
    "orchestrator",
    "audit",
    "gateway",
    "admin",
    "monitor",
    "bot",
    "nats",
    "sandbox",
    "egress",
    "scheduler",
    "all",
    "sys",
    "system",
];

/// Checks the subject-token grammar shared by principals and channels:
/// `[a-z][a-z0-9-]*`, at most [`MAX_PRINCIPAL_LEN`] bytes, not ending in `-`, no `--`.
fn check_token(kind: &'static str, s: &str) -> Result<(), NameError> {
    let invalid = |reason: &'static str| NameError {
        kind,
        reason,
        len: s.len(),
    };
    if s.is_empty() {
        return Err(invalid("is empty"));
    }
    if s.len() > MAX_PRINCIPAL_LEN {
        return Err(invalid("is too long"));
    }
    let bytes = s.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_lowercase) {
        return Err(invalid("must start with a lowercase ASCII letter"));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(invalid("may hold only a-z, 0-9 and '-'"));
    }
    if s.ends_with('-') || s.contains("--") {
        return Err(invalid("may not end in '-' or hold '--'"));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(&s)?;
                Ok(Self(s))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    /// Any service or agent that holds an identity: the sender of an envelope, the issuer of a
    /// token, the `<service>` in `audit.<service>`.
    Principal,
    |s| check_token("principal", s)
);

string_newtype!(
    /// An agent's name: a [`Principal`] that is not one of the [`RESERVED_NAMES`].
    AgentName,
    |s| {
        check_token("agent name", s)?;
        if RESERVED_NAMES.contains(&s) {
            return Err(NameError {
                kind: "agent name",
                reason: "is reserved for a platform service",
                len: s.len(),
            });
        }
        Ok(())
    }
);

string_newtype!(
    /// A chat channel: `telegram`, `slack`, `imessage`, `terminal`, `web`.
    ChannelName,
    |s| check_token("channel name", s)
);

string_newtype!(
    /// An agent action such as `light.set` or `lights.list`: one to four dot-separated segments
    /// of `[a-z][a-z0-9_]*`. Actions never appear in subjects.
    ActionName,
    |s| {
        let invalid = |reason| NameError {
            kind: "action name",
            reason,
            len: s.len(),
        };
        if s.is_empty() || s.len() > MAX_ACTION_LEN {
            return Err(invalid("must be 1 to 64 bytes"));
        }
        let segments: Vec<&str> = s.split('.').collect();
        if segments.len() > 4 {
            return Err(invalid("has more than four segments"));
        }
        for seg in segments {
            let b = seg.as_bytes();
            if !b.first().is_some_and(u8::is_ascii_lowercase)
                || !b
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
            {
                return Err(invalid("segments must match [a-z][a-z0-9_]*"));
            }
        }
        Ok(())
    }
);

string_newtype!(
    /// A chat user: `<channel>:<platform user id>`, for example `telegram:5551234`. The platform
    /// id is 1 to 96 bytes with no whitespace or control characters.
    ChatUser,
    |s| {
        let invalid = |reason| NameError {
            kind: "chat user",
            reason,
            len: s.len(),
        };
        if s.len() > MAX_CHAT_USER_LEN {
            return Err(invalid("is too long"));
        }
        let Some((channel, id)) = s.split_once(':') else {
            return Err(invalid("must be <channel>:<id>"));
        };
        check_token("chat user channel", channel)?;
        if id.is_empty() || id.len() > 96 {
            return Err(invalid("platform id must be 1 to 96 bytes"));
        }
        if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("platform id may not hold whitespace or control characters"));
        }
        Ok(())
    }
);

impl ChatUser {
    /// Builds `<channel>:<id>` from its parts.
    pub fn from_parts(channel: &ChannelName, platform_id: &str) -> Result<Self, NameError> {
        Self::new(format!("{channel}:{platform_id}"))
    }

    /// The channel part.
    pub fn channel(&self) -> &str {
        self.0.split_once(':').map_or("", |(c, _)| c)
    }

    /// The platform's own user id.
    pub fn platform_id(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, id)| id)
    }
}

impl From<AgentName> for Principal {
    fn from(a: AgentName) -> Self {
        Principal(a.0)
    }
}

impl From<&AgentName> for Principal {
    fn from(a: &AgentName) -> Self {
        Principal(a.0.clone())
    }
}

impl Principal {
    /// The orchestrator service.
    pub fn orchestrator() -> Self {
        Principal("orchestrator".to_owned())
    }
    /// The audit writer service.
    pub fn audit() -> Self {
        Principal("audit".to_owned())
    }
    /// The notify gateway.
    pub fn gateway() -> Self {
        Principal("gateway".to_owned())
    }

    /// This principal as an agent name, if it is not a reserved service name.
    pub fn as_agent(&self) -> Option<AgentName> {
        AgentName::new(self.0.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: std::fmt::Debug>(r: Result<T, NameError>) -> String {
        match r {
            Ok(v) => format!("ok {v:?}"),
            Err(e) => format!("err {e}"),
        }
    }

    #[test]
    fn names_reject_subject_metacharacters() {
        let cases = [
            "hue",
            "home-automation",
            "a",
            "",
            "Hue",
            "hue.lights",
            "hue*",
            "hue>",
            ">",
            "*",
            "hue lights",
            "hue\tx",
            "hue\n",
            "hue\u{0}",
            "hue-",
            "-hue",
            "hu--e",
            "1hue",
            "héu",
            "abcdefghijabcdefghijabcdefghijab",
            "abcdefghijabcdefghijabcdefghijabc",
            "orchestrator",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c:?} -> {}", check(AgentName::new(*c))))
            .collect();
        expect_test::expect![[r#"
            "hue" -> ok AgentName("hue")
            "home-automation" -> ok AgentName("home-automation")
            "a" -> ok AgentName("a")
            "" -> err invalid agent name (0 bytes): is empty
            "Hue" -> err invalid agent name (3 bytes): must start with a lowercase ASCII letter
            "hue.lights" -> err invalid agent name (10 bytes): may hold only a-z, 0-9 and '-'
            "hue*" -> err invalid agent name (4 bytes): may hold only a-z, 0-9 and '-'
            "hue>" -> err invalid agent name (4 bytes): may hold only a-z, 0-9 and '-'
            ">" -> err invalid agent name (1 bytes): must start with a lowercase ASCII letter
            "*" -> err invalid agent name (1 bytes): must start with a lowercase ASCII letter
            "hue lights" -> err invalid agent name (10 bytes): may hold only a-z, 0-9 and '-'
            "hue\tx" -> err invalid agent name (5 bytes): may hold only a-z, 0-9 and '-'
            "hue\n" -> err invalid agent name (4 bytes): may hold only a-z, 0-9 and '-'
            "hue\0" -> err invalid agent name (4 bytes): may hold only a-z, 0-9 and '-'
            "hue-" -> err invalid agent name (4 bytes): may not end in '-' or hold '--'
            "-hue" -> err invalid agent name (4 bytes): must start with a lowercase ASCII letter
            "hu--e" -> err invalid agent name (5 bytes): may not end in '-' or hold '--'
            "1hue" -> err invalid agent name (4 bytes): must start with a lowercase ASCII letter
            "héu" -> err invalid agent name (4 bytes): may hold only a-z, 0-9 and '-'
            "abcdefghijabcdefghijabcdefghijab" -> ok AgentName("abcdefghijabcdefghijabcdefghijab")
            "abcdefghijabcdefghijabcdefghijabc" -> err invalid agent name (33 bytes): is too long
            "orchestrator" -> err invalid agent name (12 bytes): is reserved for a platform service"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn actions_and_chat_users() {
        let out: Vec<String> = [
            "light.set",
            "lights.list",
            "scene.activate",
            "a.b.c.d",
            "a.b.c.d.e",
            "light..set",
            ".set",
            "Light.set",
            "light.set*",
        ]
        .iter()
        .map(|c| format!("{c:?} -> {}", check(ActionName::new(*c))))
        .chain(
            [
                "telegram:5551234",
                "imessage:+447700900123",
                "slack:U012AB3CD",
                "telegram:",
                "telegram 123",
                "telegram:12 3",
                "TELEGRAM:1",
                "nochannel",
            ]
            .iter()
            .map(|c| format!("{c:?} -> {}", check(ChatUser::new(*c)))),
        )
        .collect();
        expect_test::expect![[r#"
            "light.set" -> ok ActionName("light.set")
            "lights.list" -> ok ActionName("lights.list")
            "scene.activate" -> ok ActionName("scene.activate")
            "a.b.c.d" -> ok ActionName("a.b.c.d")
            "a.b.c.d.e" -> err invalid action name (9 bytes): has more than four segments
            "light..set" -> err invalid action name (10 bytes): segments must match [a-z][a-z0-9_]*
            ".set" -> err invalid action name (4 bytes): segments must match [a-z][a-z0-9_]*
            "Light.set" -> err invalid action name (9 bytes): segments must match [a-z][a-z0-9_]*
            "light.set*" -> err invalid action name (10 bytes): segments must match [a-z][a-z0-9_]*
            "telegram:5551234" -> ok ChatUser("telegram:5551234")
            "imessage:+447700900123" -> ok ChatUser("imessage:+447700900123")
            "slack:U012AB3CD" -> ok ChatUser("slack:U012AB3CD")
            "telegram:" -> err invalid chat user (9 bytes): platform id must be 1 to 96 bytes
            "telegram 123" -> err invalid chat user (12 bytes): must be <channel>:<id>
            "telegram:12 3" -> err invalid chat user (13 bytes): platform id may not hold whitespace or control characters
            "TELEGRAM:1" -> err invalid chat user channel (8 bytes): must start with a lowercase ASCII letter
            "nochannel" -> err invalid chat user (9 bytes): must be <channel>:<id>"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<AgentName>("\"hue\"").is_ok());
        assert!(serde_json::from_str::<AgentName>("\"cmd.>\"").is_err());
        assert!(serde_json::from_str::<Principal>("\"orchestrator\"").is_ok());
        assert!(serde_json::from_str::<AgentName>("\"orchestrator\"").is_err());
    }
}
