//! Snapshots of exactly what the models are sent, for the checked-in prompts and manifests:
//! any change to a prompt, a manifest or the request shape is a visible diff in
//! `prompts/snapshots/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use orchestrator::catalog::Catalog;
use orchestrator::plan::{AnswerFormat, LlmComposer, LlmConfig, LlmPlanner, SummarySource};
use protocol::UnixMillis;
use serde_json::{Value, json};

const NOW: UnixMillis = UnixMillis(1_795_000_000_000);

fn config(format: AnswerFormat) -> LlmConfig {
    LlmConfig {
        // Nothing is sent: the requests are only rendered.
        base_url: "http://127.0.0.1:9/v1".to_owned(),
        model: "example-model".to_owned(),
        key_file: None,
        timeout_ms: 30_000,
        max_tokens: 1024,
        answer_format: format,
    }
}

/// Messages as plain text, then every other field as pretty JSON.
fn render(title: &str, mut request: Value) -> String {
    let messages = request.as_object_mut().unwrap().remove("messages").unwrap();
    let mut out = format!("# {title}\n");
    for (i, m) in messages.as_array().unwrap().iter().enumerate() {
        out.push_str(&format!(
            "\n## message {}: {}\n\n{}\n",
            i + 1,
            m["role"].as_str().unwrap(),
            m["content"].as_str().unwrap()
        ));
    }
    out.push_str(&format!(
        "\n## the other fields\n\n{}\n",
        serde_json::to_string_pretty(&request).unwrap()
    ));
    out
}

#[test]
fn the_planner_request_with_tools() {
    let planner = LlmPlanner::new(&config(AnswerFormat::Tools), Catalog::all()).unwrap();
    let request = planner.request_json("start bedtime, but keep the kitchen on", NOW);
    expect_test::expect_file!["../../prompts/snapshots/planner_tools.txt"].assert_eq(&render(
        "Planner request, answer_format = \"tools\" (all checked-in agents)",
        request,
    ));
}

#[test]
fn the_planner_request_with_a_json_schema() {
    let planner = LlmPlanner::new(&config(AnswerFormat::JsonSchema), Catalog::all()).unwrap();
    let request = planner.request_json("start bedtime, but keep the kitchen on", NOW);
    expect_test::expect_file!["../../prompts/snapshots/planner_json_schema.txt"].assert_eq(
        &render(
            "Planner request, answer_format = \"json_schema\" (all checked-in agents)",
            request,
        ),
    );
}

#[test]
fn the_summary_request() {
    let composer = LlmComposer::new(&config(AnswerFormat::Tools)).unwrap();
    let sources = [SummarySource {
        source: "hue lights.list".to_owned(),
        data: json!({"lights": [
            {"id": "f427202e", "name": "Light 2", "room": "Room 9", "on": true, "brightness": 10.0, "mirek": 455},
            {"id": "183cce41", "name": "Light 6", "room": "Room 1", "on": true, "brightness": 100.0, "mirek": 233}
        ]}),
    }];
    let request = composer.request_json(NOW, &sources).unwrap();
    expect_test::expect_file!["../../prompts/snapshots/summary.txt"]
        .assert_eq(&render("Daily summary request", request));
}
