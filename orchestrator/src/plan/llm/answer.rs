//! What the model answered: pure interpretation of one chat completion.
//!
//! Only two things can come out of a model: a plan, built from the validated arguments of a
//! `propose_plan` call (or the `propose_plan` object of a JSON-schema answer), and an answer in
//! words, from a `reply` call or plain prose. Text in `content` is never parsed for steps:
//! prose that embeds JSON or code (a step "smuggled" into the text) is refused, and plain prose
//! is at most an answer. A plan's summary and whys come only from the tool arguments, after
//! validation.
//!
//! [`interpret`] sorts every answer into one of four outcomes: a plan, an answer, a
//! [`Problem`] worth one repair round (the model can fix it: invalid arguments, an unknown
//! tool, several calls, a plan that failed validation, non-JSON in JSON mode), or a
//! [`Failure`] that a repair round would not fix (an empty, cut-off or declined answer, steps
//! in prose, no choice at all).

use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionResponse, FinishReason,
};
use serde::Deserialize;
use serde_json::Value;

use super::AnswerFormat;
use super::request::{MAX_REPLY_CHARS, PLAN_TOOL, REPLY_TOOL};
use crate::catalog::Catalog;
use crate::plan::validate::{DraftPlan, DraftStep, Violation, validate};
use crate::plan::{Plan, PlannerKind};

/// Longest piece of model output quoted in a problem, in characters.
const QUOTE_CHARS: usize = 80;
/// Most tool calls echoed back in a repair round.
pub(super) const MAX_ECHOED_CALLS: usize = 4;

/// `propose_plan` arguments, parsed strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanArgs {
    summary: String,
    steps: Vec<StepArgs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepArgs {
    agent: String,
    action: String,
    params: Value,
    why: String,
}

/// `reply` arguments, parsed strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyArgs {
    text: String,
}

/// Something the model can fix in its one repair round.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// The proposed plan failed validation.
    Violations(Vec<Violation>),
    /// A tool's arguments are not valid JSON of the right shape (or carry extra fields).
    BadArguments {
        /// The tool.
        tool: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A call to a tool that does not exist.
    UnknownTool(String),
    /// More than one tool call.
    SeveralToolCalls(usize),
    /// In JSON-schema mode, content that is not a JSON answer.
    NotJson(String),
}

impl Problem {
    /// Stable code (the refusal code when the repair round does not fix it).
    pub fn code(&self) -> &'static str {
        match self {
            Problem::Violations(v) => v.first().map_or("plan_invalid", |first| first.kind.code()),
            Problem::BadArguments { .. } => "llm_arguments_invalid",
            Problem::UnknownTool(_) => "llm_unknown_tool",
            Problem::SeveralToolCalls(_) => "llm_several_tool_calls",
            Problem::NotJson(_) => "llm_answer_not_json",
        }
    }

    /// What is wrong, one sentence each (sent back to the model, and kept in the audit detail).
    pub fn sentences(&self) -> Vec<String> {
        match self {
            Problem::Violations(v) => v.iter().map(ToString::to_string).collect(),
            Problem::BadArguments { tool, reason } => {
                vec![format!("the {tool} arguments are not valid: {reason}")]
            }
            Problem::UnknownTool(name) => vec![format!(
                "there is no tool {}; call {PLAN_TOOL} or {REPLY_TOOL}",
                quote(name)
            )],
            Problem::SeveralToolCalls(n) => vec![format!(
                "you made {n} tool calls; make exactly one: {PLAN_TOOL} with the whole plan, or {REPLY_TOOL}"
            )],
            Problem::NotJson(reason) => vec![format!(
                "the answer is not a JSON object with exactly one of {PLAN_TOOL} or {REPLY_TOOL}: {reason}"
            )],
        }
    }

    /// What the user reads when the repair round did not fix it (never model output).
    pub fn user_message(&self) -> String {
        let what = match self {
            Problem::Violations(v) => match v.first().map(|v| v.kind) {
                Some(crate::plan::ViolationKind::UnknownAgent) => {
                    "it proposed an agent that does not exist"
                }
                Some(crate::plan::ViolationKind::UnknownAction) => {
                    "it proposed an action that does not exist"
                }
                Some(crate::plan::ViolationKind::ParamsInvalid) => {
                    "it proposed settings an action does not accept"
                }
                Some(crate::plan::ViolationKind::TooManySteps) => {
                    "it proposed more steps than a plan may have"
                }
                Some(crate::plan::ViolationKind::NoSteps) => "it proposed a plan with no steps",
                Some(crate::plan::ViolationKind::DuplicateStep) => {
                    "it proposed the same step twice"
                }
                Some(crate::plan::ViolationKind::ContradictorySteps) => {
                    "it proposed steps that contradict each other"
                }
                Some(
                    crate::plan::ViolationKind::SummaryInvalid
                    | crate::plan::ViolationKind::WhyInvalid,
                )
                | None => "its explanation of the plan was unusable",
            },
            Problem::BadArguments { .. } => "its answer was not a well-formed plan",
            Problem::UnknownTool(_) => "it asked for a tool that does not exist",
            Problem::SeveralToolCalls(_) => "it gave several answers at once instead of one plan",
            Problem::NotJson(_) => "its answer was not in the required format",
        };
        format!(
            "The language model did not produce a valid plan: {what}. Nothing was run; try saying it differently."
        )
    }
}

/// An answer a repair round would not fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No choice in the completion.
    NoChoice,
    /// Cut off at the token limit.
    Truncated,
    /// The model declined (`refusal`).
    Declined,
    /// Neither a tool call nor any text.
    Empty,
    /// Steps or code in prose instead of a tool call.
    ProseWithSteps,
}

impl Failure {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::NoChoice => "llm_response_malformed",
            Failure::Truncated => "llm_answer_truncated",
            Failure::Declined => "llm_declined",
            Failure::Empty => "llm_empty_answer",
            Failure::ProseWithSteps => "llm_prose_instead_of_plan",
        }
    }

    /// For operators and the audit log.
    pub fn detail(&self) -> &'static str {
        match self {
            Failure::NoChoice => "the completion has no choices",
            Failure::Truncated => "the answer stopped at the token limit (finish_reason length)",
            Failure::Declined => "the model answered with a refusal",
            Failure::Empty => "the answer has neither a tool call nor text",
            Failure::ProseWithSteps => {
                "the answer is text that embeds JSON or code instead of a tool call; text is never executed"
            }
        }
    }

    /// What the user reads.
    pub fn user_message(&self) -> String {
        match self {
            Failure::NoChoice => {
                "The language model's answer was not a valid chat completion. Nothing was run."
            }
            Failure::Truncated => {
                "The language model's answer was cut off before it was complete. Nothing was run; try a shorter request."
            }
            Failure::Declined => "The language model declined to help with that. Nothing was run.",
            Failure::Empty => "The language model gave an empty answer. Nothing was run.",
            Failure::ProseWithSteps => {
                "The language model described actions in text instead of proposing a plan, and text is never run. Nothing was run; try saying it differently."
            }
        }
        .to_owned()
    }
}

/// What the model said, to be echoed back in a repair round.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Echo {
    /// Its tool calls (at most [`MAX_ECHOED_CALLS`]).
    ToolCalls(Vec<ChatCompletionMessageToolCalls>),
    /// Its text (JSON-schema mode).
    Content(String),
}

/// What one completion amounts to.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Interpretation {
    /// A validated plan.
    Plan(Plan),
    /// An answer in words (sanitised and bounded).
    Answer(String),
    /// Worth one repair round.
    Retry(Problem, Echo),
    /// Final.
    Fail(Failure),
}

fn quote(s: &str) -> String {
    let cut: String = s.chars().take(QUOTE_CHARS).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Shortens a parser message (which may quote model output).
fn short(reason: impl ToString) -> String {
    let r = reason.to_string();
    let cut: String = r
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cut
}

/// Text shown to the user: control characters (except line breaks and tabs) become spaces,
/// surrounding space is trimmed, and it is cut to [`MAX_REPLY_CHARS`].
pub(super) fn sanitise(text: &str, max_chars: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().count() > max_chars {
        let mut cut: String = trimmed.chars().take(max_chars.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        trimmed.to_owned()
    }
}

/// Whether prose carries something that looks like a plan: JSON, code, or a tool name.
fn looks_like_steps(text: &str) -> bool {
    text.contains('{')
        || text.contains("```")
        || text.contains(PLAN_TOOL)
        || text.contains("\"agent\"")
        || text.contains("\"action\"")
}

fn plan_from(args: PlanArgs, catalog: &Catalog, model: &str) -> Result<Plan, Problem> {
    let draft = DraftPlan {
        summary: args.summary,
        steps: args
            .steps
            .into_iter()
            .map(|s| DraftStep {
                agent: s.agent,
                action: s.action,
                params: s.params,
                why: s.why,
            })
            .collect(),
        planner: PlannerKind::Llm(model.to_owned()),
        continue_on_failure: false,
    };
    validate(catalog, draft).map_err(Problem::Violations)
}

fn reply_from(args: ReplyArgs) -> Result<String, Problem> {
    let text = sanitise(&args.text, MAX_REPLY_CHARS);
    if text.is_empty() {
        return Err(Problem::BadArguments {
            tool: REPLY_TOOL,
            reason: "the text is empty".to_owned(),
        });
    }
    Ok(text)
}

/// One tool's arguments (a JSON value) to an outcome.
fn tool_outcome(
    name: &str,
    arguments: Result<Value, String>,
    catalog: &Catalog,
    model: &str,
) -> Result<Interpretation, Problem> {
    match name {
        PLAN_TOOL => {
            let args: PlanArgs = arguments
                .and_then(|v| serde_json::from_value(v).map_err(short))
                .map_err(|reason| Problem::BadArguments {
                    tool: PLAN_TOOL,
                    reason,
                })?;
            plan_from(args, catalog, model).map(Interpretation::Plan)
        }
        REPLY_TOOL => {
            let args: ReplyArgs = arguments
                .and_then(|v| serde_json::from_value(v).map_err(short))
                .map_err(|reason| Problem::BadArguments {
                    tool: REPLY_TOOL,
                    reason,
                })?;
            reply_from(args).map(Interpretation::Answer)
        }
        other => Err(Problem::UnknownTool(other.to_owned())),
    }
}

/// Interprets one completion.
pub(super) fn interpret(
    format: AnswerFormat,
    response: &CreateChatCompletionResponse,
    catalog: &Catalog,
    model: &str,
) -> Interpretation {
    let Some(choice) = response.choices.first() else {
        return Interpretation::Fail(Failure::NoChoice);
    };
    if choice.finish_reason == Some(FinishReason::Length) {
        return Interpretation::Fail(Failure::Truncated);
    }
    let message = &choice.message;
    if message
        .refusal
        .as_deref()
        .is_some_and(|r| !r.trim().is_empty())
    {
        return Interpretation::Fail(Failure::Declined);
    }
    match format {
        AnswerFormat::Tools => interpret_tools(message, catalog, model),
        AnswerFormat::JsonSchema => interpret_json(message.content.as_deref(), catalog, model),
    }
}

fn interpret_tools(
    message: &async_openai::types::chat::ChatCompletionResponseMessage,
    catalog: &Catalog,
    model: &str,
) -> Interpretation {
    let calls = message.tool_calls.as_deref().unwrap_or_default();
    if calls.is_empty() {
        let text = message.content.as_deref().unwrap_or_default();
        if text.trim().is_empty() {
            return Interpretation::Fail(Failure::Empty);
        }
        if looks_like_steps(text) {
            return Interpretation::Fail(Failure::ProseWithSteps);
        }
        return Interpretation::Answer(sanitise(text, MAX_REPLY_CHARS));
    }
    let echo = Echo::ToolCalls(calls.iter().take(MAX_ECHOED_CALLS).cloned().collect());
    if calls.len() > 1 {
        return Interpretation::Retry(Problem::SeveralToolCalls(calls.len()), echo);
    }
    let outcome = match calls.first() {
        Some(ChatCompletionMessageToolCalls::Function(call)) => {
            let arguments = serde_json::from_str::<Value>(&call.function.arguments)
                .map_err(|e| format!("not JSON: {}", short(e)));
            tool_outcome(&call.function.name, arguments, catalog, model)
        }
        Some(ChatCompletionMessageToolCalls::Custom(call)) => {
            Err(Problem::UnknownTool(call.custom_tool.name.clone()))
        }
        None => return Interpretation::Fail(Failure::Empty),
    };
    match outcome {
        Ok(done) => done,
        Err(problem) => Interpretation::Retry(problem, echo),
    }
}

fn interpret_json(content: Option<&str>, catalog: &Catalog, model: &str) -> Interpretation {
    let text = content.unwrap_or_default();
    if text.trim().is_empty() {
        return Interpretation::Fail(Failure::Empty);
    }
    let echo = Echo::Content(text.to_owned());
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Interpretation::Retry(Problem::NotJson(short(e)), echo),
    };
    let Value::Object(map) = value else {
        return Interpretation::Retry(
            Problem::NotJson("the answer is not an object".to_owned()),
            echo,
        );
    };
    if map.len() != 1 {
        return Interpretation::Retry(
            Problem::NotJson(format!("the answer has {} keys", map.len())),
            echo,
        );
    }
    let Some((key, args)) = map.into_iter().next() else {
        return Interpretation::Fail(Failure::Empty);
    };
    match tool_outcome(&key, Ok(args), catalog, model) {
        Ok(done) => done,
        Err(problem) => Interpretation::Retry(problem, echo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completion(message: Value, finish: &str) -> CreateChatCompletionResponse {
        serde_json::from_value(json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_763_740_800,
            "model": "test-model",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }))
        .unwrap()
    }

    fn call(name: &str, arguments: &str) -> Value {
        json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
        ]})
    }

    fn show(i: Interpretation) -> String {
        match i {
            Interpretation::Plan(p) => format!(
                "plan {:?}: {}",
                p.summary,
                p.steps
                    .iter()
                    .map(|s| format!("{} {} {}", s.agent, s.action, s.params))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Interpretation::Answer(a) => format!("answer {a:?}"),
            Interpretation::Retry(p, _) => {
                format!("retry {}: {}", p.code(), p.sentences().join(" / "))
            }
            Interpretation::Fail(f) => format!("fail {}", f.code()),
        }
    }

    fn tools(message: Value, finish: &str) -> String {
        show(interpret(
            AnswerFormat::Tools,
            &completion(message, finish),
            &Catalog::all(),
            "test-model",
        ))
    }

    fn json_mode(content: &str) -> String {
        show(interpret(
            AnswerFormat::JsonSchema,
            &completion(json!({"role": "assistant", "content": content}), "stop"),
            &Catalog::all(),
            "test-model",
        ))
    }

    const GOOD: &str = r#"{"summary":"Kitchen off","steps":[{"agent":"hue","action":"room.set","params":{"room":"Kitchen","on":false},"why":"You asked for it."}]}"#;

    #[test]
    fn tool_call_answers_are_sorted() {
        let two_calls = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "reply", "arguments": "{\"text\":\"hi\"}"}},
            {"id": "b", "type": "function", "function": {"name": "propose_plan", "arguments": GOOD}}
        ]});
        let custom = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "custom", "custom_tool": {"name": "shell", "input": "rm -rf /"}}
        ]});
        let cases = [
            tools(call("propose_plan", GOOD), "tool_calls"),
            tools(
                call("reply", r#"{"text":"Hello!\u0007 How can I help?"}"#),
                "tool_calls",
            ),
            tools(call("reply", r#"{"text":"  "}"#), "tool_calls"),
            tools(
                call("reply", r#"{"text":"hi","mood":"happy"}"#),
                "tool_calls",
            ),
            tools(
                call("propose_plan", &GOOD.replace("room.set", "door.unlock")),
                "tool_calls",
            ),
            tools(
                call(
                    "propose_plan",
                    &GOOD.replace(r#""why""#, r#""run_now":true,"why""#),
                ),
                "tool_calls",
            ),
            tools(
                call(
                    "propose_plan",
                    &GOOD.replace(r#""summary""#, r#""auto_approve":true,"summary""#),
                ),
                "tool_calls",
            ),
            tools(
                call("propose_plan", r#"{"summary":"x","steps":["#),
                "tool_calls",
            ),
            tools(call("propose_plan", r#"{"summary":"x"}"#), "tool_calls"),
            tools(call("delete_everything", "{}"), "tool_calls"),
            tools(two_calls, "tool_calls"),
            tools(custom, "tool_calls"),
            tools(call("propose_plan", GOOD), "length"),
            tools(
                json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
                "stop",
            ),
            tools(
                json!({"role": "assistant", "content": "Sure! Here is the plan: {\"steps\":[{\"agent\":\"hue\",\"action\":\"room.set\",\"params\":{\"room\":\"Kitchen\",\"on\":false}}]}"}),
                "stop",
            ),
            tools(
                json!({"role": "assistant", "content": "```\npropose_plan(kitchen off)\n```"}),
                "stop",
            ),
            tools(
                json!({"role": "assistant", "content": "The kitchen light is a Hue light."}),
                "stop",
            ),
            tools(json!({"role": "assistant", "content": ""}), "stop"),
            tools(
                json!({"role": "assistant", "content": null, "tool_calls": []}),
                "stop",
            ),
        ];
        expect_test::expect![[r#"
            plan "Kitchen off": hue room.set {"on":false,"room":"Kitchen"}
            answer "Hello!  How can I help?"
            retry llm_arguments_invalid: the reply arguments are not valid: the text is empty
            retry llm_arguments_invalid: the reply arguments are not valid: unknown field `mood`, expected `text`
            retry plan_unknown_action: step 1: agent hue has no action "door.unlock"; its actions are: lights.list, rooms.list, scenes.list, light.set, room.set, scene.activate
            retry llm_arguments_invalid: the propose_plan arguments are not valid: unknown field `run_now`, expected one of `agent`, `action`, `params`, `why`
            retry llm_arguments_invalid: the propose_plan arguments are not valid: unknown field `auto_approve`, expected `summary` or `steps`
            retry llm_arguments_invalid: the propose_plan arguments are not valid: not JSON: EOF while parsing a list at line 1 column 24
            retry llm_arguments_invalid: the propose_plan arguments are not valid: missing field `steps`
            retry llm_unknown_tool: there is no tool "delete_everything"; call propose_plan or reply
            retry llm_several_tool_calls: you made 2 tool calls; make exactly one: propose_plan with the whole plan, or reply
            retry llm_unknown_tool: there is no tool "shell"; call propose_plan or reply
            fail llm_answer_truncated
            fail llm_declined
            fail llm_prose_instead_of_plan
            fail llm_prose_instead_of_plan
            answer "The kitchen light is a Hue light."
            fail llm_empty_answer
            fail llm_empty_answer"#]]
        .assert_eq(&cases.join("\n"));
    }

    #[test]
    fn json_schema_answers_are_sorted() {
        let cases = [
            json_mode(&format!(r#"{{"propose_plan":{GOOD}}}"#)),
            json_mode(r#"{"reply":{"text":"Nothing to do."}}"#),
            json_mode(r#"{"reply":{"text":"a"},"propose_plan":{}}"#),
            json_mode(r#"{"run":{"text":"a"}}"#),
            json_mode(r#"["propose_plan"]"#),
            json_mode("Sure, I will turn the kitchen off."),
            json_mode("```json\n{\"reply\":{\"text\":\"hi\"}}\n```"),
            json_mode(""),
        ];
        expect_test::expect![[r#"
            plan "Kitchen off": hue room.set {"on":false,"room":"Kitchen"}
            answer "Nothing to do."
            retry llm_answer_not_json: the answer is not a JSON object with exactly one of propose_plan or reply: the answer has 2 keys
            retry llm_unknown_tool: there is no tool "run"; call propose_plan or reply
            retry llm_answer_not_json: the answer is not a JSON object with exactly one of propose_plan or reply: the answer is not an object
            retry llm_answer_not_json: the answer is not a JSON object with exactly one of propose_plan or reply: expected value at line 1 column 1
            retry llm_answer_not_json: the answer is not a JSON object with exactly one of propose_plan or reply: expected value at line 1 column 1
            fail llm_empty_answer"#]]
        .assert_eq(&cases.join("\n"));
    }

    #[test]
    fn replies_are_sanitised_and_bounded() {
        let long = "é".repeat(MAX_REPLY_CHARS + 10);
        let s = sanitise(&long, MAX_REPLY_CHARS);
        assert_eq!(s.chars().count(), MAX_REPLY_CHARS);
        assert!(s.ends_with('…'));
        assert_eq!(sanitise(" a\u{1b}[31mb\n c\t ", 100), "a [31mb\n c");
    }

    #[test]
    fn a_completion_without_choices_fails() {
        let mut c = completion(call("reply", r#"{"text":"hi"}"#), "tool_calls");
        c.choices.clear();
        assert_eq!(
            show(interpret(AnswerFormat::Tools, &c, &Catalog::all(), "m")),
            "fail llm_response_malformed"
        );
    }
}
