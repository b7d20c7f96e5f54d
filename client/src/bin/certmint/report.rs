//! How a one-shot command (`enroll`, `status`, `admin`) reports the failure
//! it ends with: `error: <code>: <detail>` for a server problem (then one
//! indented line per refused name and the request id), `error: <text>`
//! otherwise, on stderr. The long-running `agent` logs structured lines
//! instead, for its journal.
//!
//! Invariants: every line is printable (control characters from the server
//! are escaped, never interpreted by the terminal); no field is printed
//! empty; nothing here sees a token or key, so none can leak.

use std::fmt::Display;

use certmint::client::Error as ClientError;
use certmint::Problem;

use crate::table::printable;

/// Prints the report of `error` on stderr.
pub fn client_error(error: &ClientError) {
    eprint!("{}", client_error_text(error));
}

/// Prints `error: <message>` on stderr.
pub fn message(message: &dyn Display) {
    eprint!("{}", message_text(message));
}

/// The lines [`client_error`] prints.
pub fn client_error_text(error: &ClientError) -> String {
    match error {
        ClientError::Problem(problem) => problem_text(problem),
        other => message_text(other),
    }
}

/// `error: <message>`, one line.
pub fn message_text(message: &dyn Display) -> String {
    format!("error: {}\n", printable(&message.to_string()))
}

fn problem_text(problem: &Problem) -> String {
    let mut text = format!("error: {}: {}\n", problem.code, printable(&problem.detail));
    for refusal in &problem.refusals {
        text.push_str(&format!(
            "  {} {}: {}: {}\n",
            refusal.kind,
            printable(&refusal.name),
            refusal.code,
            printable(&refusal.reason)
        ));
    }
    if let Some(id) = &problem.request_id {
        text.push_str(&format!("  (request id {})\n", printable(id)));
    }
    text
}

#[cfg(test)]
mod tests {
    use certmint::ProblemCode;

    use super::*;

    #[test]
    fn ok_problems_print_code_detail_refusals_and_request_id() {
        let problem = Problem {
            problem_type: "urn:certmint:problem:token.used".into(),
            title: "token used".into(),
            status: 409,
            detail: "the token has no uses left\x1b[2J".into(),
            code: ProblemCode::TokenUsed,
            request_id: Some("r1".into()),
            refusals: Vec::new(),
        };
        assert_eq!(
            client_error_text(&ClientError::Problem(Box::new(problem))),
            "error: token.used: the token has no uses left\\u{1b}[2J\n  (request id r1)\n"
        );
    }

    #[test]
    fn ok_other_failures_are_one_error_line() {
        let error = ClientError::Transport("connection refused".into());
        assert_eq!(
            client_error_text(&error),
            "error: cannot reach the certmint server: connection refused\n"
        );
        assert_eq!(
            message_text(&"line one\nline two"),
            "error: line one\\nline two\n"
        );
    }
}
