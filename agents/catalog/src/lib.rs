//! The agent catalog: every agent's manifest, as checked-in data.
//!
//! What it does: each manifest is a JSON file `manifests/<agent>.json`
//! ([`protocol::manifest::Manifest`], parameter schemas in the [`protocol::schema`] subset),
//! embedded in the binary at compile time and parsed once, on first use. Agents take their own
//! manifest from here, and the orchestrator builds its tool catalog and approval policy from
//! [`all`], so both sides always agree on the actions, their effects and their parameters.
//!
//! What it does not do: it never reads a manifest from disk at run time or from a running
//! agent (an agent cannot declare one of its actions "read-only" to skip approval), and it
//! holds no policy of its own. A manifest that fails to parse or whose name differs from its
//! file name is left out of [`all`] and reported by [`problems`]; the tests of this crate keep
//! that list empty.
#![forbid(unsafe_code)]

use std::sync::LazyLock;

use protocol::AgentName;
use protocol::manifest::{CheckedManifest, ManifestError};

/// The embedded manifest files: (file stem, contents). One entry per file in `manifests/`.
const SOURCES: &[(&str, &str)] = &[
    ("hue", include_str!("../manifests/hue.json")),
    (
        "audit-anomaly",
        include_str!("../manifests/audit-anomaly.json"),
    ),
];

/// Why an embedded manifest was left out of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The file is not a valid manifest.
    #[error("manifests/{file}.json: {source}")]
    Invalid {
        /// The file stem.
        file: &'static str,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// The manifest names another agent than its file.
    #[error("manifests/{file}.json names agent {name}")]
    NameMismatch {
        /// The file stem.
        file: &'static str,
        /// The name inside.
        name: String,
    },
    /// Two files name the same agent.
    #[error("manifests/{file}.json: agent {name} is already in the catalog")]
    Duplicate {
        /// The file stem.
        file: &'static str,
        /// The name inside.
        name: String,
    },
}

impl CatalogError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            CatalogError::Invalid { source, .. } => source.code(),
            CatalogError::NameMismatch { .. } => "catalog_name_mismatch",
            CatalogError::Duplicate { .. } => "catalog_duplicate_agent",
        }
    }
}

struct Catalog {
    manifests: Vec<CheckedManifest>,
    problems: Vec<CatalogError>,
}

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| load(SOURCES));

fn load(sources: &[(&'static str, &str)]) -> Catalog {
    let mut manifests: Vec<CheckedManifest> = Vec::with_capacity(sources.len());
    let mut problems = Vec::new();
    for (file, text) in sources {
        match CheckedManifest::from_json(text) {
            Err(source) => problems.push(CatalogError::Invalid { file, source }),
            Ok(m) if m.name().as_str() != *file => problems.push(CatalogError::NameMismatch {
                file,
                name: m.name().to_string(),
            }),
            Ok(m) if manifests.iter().any(|other| other.name() == m.name()) => {
                problems.push(CatalogError::Duplicate {
                    file,
                    name: m.name().to_string(),
                });
            }
            Ok(m) => manifests.push(m),
        }
    }
    Catalog {
        manifests,
        problems,
    }
}

/// Every manifest in the catalog, in file order.
pub fn all() -> &'static [CheckedManifest] {
    &CATALOG.manifests
}

/// One agent's manifest.
pub fn get(name: &AgentName) -> Option<&'static CheckedManifest> {
    CATALOG.manifests.iter().find(|m| m.name() == name)
}

/// Embedded manifests that were left out, and why (empty in every build whose tests pass).
pub fn problems() -> &'static [CatalogError] {
    &CATALOG.problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::MAX_LINE;
    use protocol::schema::Schema;

    #[test]
    fn every_embedded_file_parses_and_is_named_after_its_agent() {
        assert!(problems().is_empty(), "{:?}", problems());
        assert_eq!(all().len(), SOURCES.len());
        for (file, _) in SOURCES {
            let name = AgentName::new(*file).unwrap();
            assert_eq!(get(&name).unwrap().name(), &name);
        }
        assert!(get(&AgentName::new("no-such-agent").unwrap()).is_none());
    }

    #[test]
    fn every_file_in_the_manifests_directory_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SOURCES.iter().map(|(f, _)| format!("{f}.json")).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    fn is_prose(text: &str) -> bool {
        text.len() >= 12
            && text.len() <= MAX_LINE
            && text.chars().next().is_some_and(char::is_uppercase)
            && (text.ends_with('.') || text.ends_with('?'))
            && !text.chars().any(char::is_control)
    }

    fn check_descriptions(schema_value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match schema_value.get("description").and_then(|d| d.as_str()) {
            Some(d) if is_prose(d) => {}
            other => out.push(format!("{path}: description {other:?}")),
        }
        if let Some(props) = schema_value.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                check_descriptions(sub, &format!("{path}/{name}"), out);
            }
        }
        if let Some(items) = schema_value.get("items") {
            check_descriptions(items, &format!("{path}/items"), out);
        }
    }

    #[test]
    fn every_action_is_described_in_prose_and_has_a_sane_timeout() {
        let mut bad = Vec::new();
        for m in all() {
            if !is_prose(&m.manifest.description) {
                bad.push(format!("{}: agent description", m.name()));
            }
            for a in &m.manifest.actions {
                let at = format!("{}/{}", m.name(), a.name);
                if !is_prose(&a.description) {
                    bad.push(format!("{at}: description {:?}", a.description));
                }
                if !(1_000..=60_000).contains(&a.timeout_ms) {
                    bad.push(format!("{at}: timeout {} ms", a.timeout_ms));
                }
                check_descriptions(&a.params, &format!("{at}/params"), &mut bad);
            }
        }
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn a_broken_or_misnamed_manifest_is_left_out_and_reported() {
        let hue = SOURCES[0].1;
        let loaded = load(&[
            ("hue", hue),
            ("lamp", hue),
            ("hue", hue),
            ("broken", "{\"name\": \"broken\"}"),
        ]);
        assert_eq!(loaded.manifests.len(), 1);
        let codes: Vec<&str> = loaded.problems.iter().map(CatalogError::code).collect();
        assert_eq!(
            codes,
            [
                "catalog_name_mismatch",
                "catalog_duplicate_agent",
                "manifest_malformed"
            ]
        );
    }

    #[test]
    fn the_hue_manifest_says_what_each_action_does() {
        let hue = get(&AgentName::new("hue").unwrap()).unwrap();
        let summary: Vec<String> = hue
            .manifest
            .actions
            .iter()
            .zip(&hue.schemas)
            .map(|(a, s)| {
                let Schema::Object {
                    properties,
                    required,
                    min_properties,
                } = s
                else {
                    unreachable!("checked manifests have object schemas")
                };
                format!(
                    "{} {:?} {} ms: {:?} required {:?} min {}",
                    a.name,
                    a.effect,
                    a.timeout_ms,
                    properties.keys().collect::<Vec<_>>(),
                    required,
                    min_properties
                )
            })
            .collect();
        expect_test::expect![[r#"
            lights.list Read 20000 ms: ["on_only"] required [] min 0
            rooms.list Read 20000 ms: [] required [] min 0
            scenes.list Read 20000 ms: ["room"] required [] min 0
            light.set Change 20000 ms: ["brightness", "light", "mirek", "on", "transition_ms"] required ["light"] min 2
            room.set Change 20000 ms: ["brightness", "mirek", "on", "room", "transition_ms"] required ["room"] min 2
            scene.activate Change 20000 ms: ["room", "scene", "transition_ms"] required ["scene"] min 0"#]]
        .assert_eq(&summary.join("\n"));
    }
}
