//! Slack. This slice holds only request-signing verification ([`signing`]): pure code that the
//! Events API / interactivity endpoints will call on every request before parsing its body.
//! The transport (Events API over HTTP, Socket Mode) and Block Kit rendering are not written yet.

pub mod signing;
