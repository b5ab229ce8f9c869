//! Name resolution, behind a trait so tests can answer with anything (private addresses, a
//! different answer on every call, nothing at all) and prove the proxy resolves once and
//! connects only to what it checked.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// Most addresses kept from one answer (the rest are ignored, never connected to).
pub const MAX_ADDRESSES: usize = 32;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves a DNS name to addresses.
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// Every address `name` resolves to, in preference order. The caller bounds the time.
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The system resolver (`getaddrinfo` on a blocking thread). Only names that passed
/// [`crate::target::parse_target`] reach it, so it never sees numeric forms it might read as
/// an address.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let mut out: Vec<IpAddr> = Vec::new();
            for addr in tokio::net::lookup_host((name, 0u16)).await? {
                let ip = addr.ip();
                if !out.contains(&ip) {
                    out.push(ip);
                }
                if out.len() == MAX_ADDRESSES {
                    break;
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_system_resolver_answers_for_localhost() {
        let addrs = SystemResolver.resolve("localhost").await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(IpAddr::is_loopback), "{addrs:?}");
    }
}
