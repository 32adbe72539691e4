//! Handlebars rendering for config files: strict (an undefined variable is an error, never
//! an empty string) and without HTML escaping.

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::Value;

/// Why a template did not render, with its position in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

fn engine() -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    h.register_escape_fn(handlebars::no_escape);
    h
}

/// Render `text` with `vars`.
pub fn render(text: &str, vars: &Value) -> Result<String, TemplateError> {
    let h = engine();
    h.render_template(text, vars).map_err(|e| {
        let message = match e.reason() {
            RenderErrorReason::MissingVariable(Some(v)) => {
                format!("undefined variable '{v}'")
            }
            RenderErrorReason::MissingVariable(None) => "undefined variable".to_string(),
            RenderErrorReason::TemplateError(te) => {
                let (line, col) = te.pos().unwrap_or((0, 0));
                return TemplateError {
                    line,
                    col,
                    message: format!("template syntax: {}", te.reason()),
                };
            }
            other => other.to_string(),
        };
        TemplateError {
            line: e.line_no.unwrap_or(0),
            col: e.column_no.unwrap_or(0),
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_without_html_escaping() {
        let out = render("a={{x}}", &json!({"x": "<b>&\"'"})).unwrap();
        assert_eq!(out, "a=<b>&\"'");
    }

    #[test]
    fn undefined_variable_is_an_error_with_position() {
        let e = render("line one\nport {{prot}}\n", &json!({"port": 80})).unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(e.message.contains("prot"), "{e:?}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = render("ok\n{{#if x}}never closed", &json!({"x": true})).unwrap_err();
        assert!(e.message.contains("template syntax"), "{e:?}");
        assert!(e.line >= 2, "{e:?}");
    }

    #[test]
    fn helpers_and_nested_values_work() {
        let out = render(
            "{{#each ports}}{{this}} {{/each}}{{site.title}}",
            &json!({"ports": [80, 443], "site": {"title": "T"}}),
        )
        .unwrap();
        assert_eq!(out, "80 443 T");
    }
}
