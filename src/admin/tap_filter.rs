//! What a `/tap` filter or a chart's `where` may be: one predicate over the output's own columns,
//! cheap per row.
//! It is planned as `SELECT * FROM tapped WHERE <predicate>`, so without this check a filter
//! could append SQL (`1=1 UNION SELECT … FROM generate_series(…)`), run subqueries, or call
//! functions that build huge values, all on the admin port.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{visit_expressions, Expr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

/// Functions a filter may call: row-local and unable to build large values.
const FUNCTIONS: &[&str] = &[
    "abs",
    "btrim",
    "ceil",
    "char_length",
    "character_length",
    "coalesce",
    "contains",
    "date_part",
    "date_trunc",
    "ends_with",
    "floor",
    "length",
    "lower",
    "ltrim",
    "now",
    "nullif",
    "regexp_like",
    "round",
    "rtrim",
    "starts_with",
    "strpos",
    "substr",
    "substring",
    "to_timestamp",
    "trim",
    "upper",
];

/// `Ok` when `predicate` is a single expression with no subquery and only [`FUNCTIONS`].
pub fn check(predicate: &str) -> Result<(), String> {
    // Before the parser builds (and the visitor below walks) a tree as deep as the predicate.
    crate::sql::limits::check(predicate)?;
    let mut parser = Parser::new(&GenericDialect {}).try_with_sql(predicate).map_err(|e| e.to_string())?;
    let expr = parser.parse_expr().map_err(|e| e.to_string())?;
    if parser.peek_token().token != Token::EOF {
        return Err(format!("only one predicate is allowed; `{}` follows it", parser.peek_token().token));
    }
    let verdict = visit_expressions(&expr, |e| match e {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break("subqueries are not allowed".to_string()),
        Expr::Function(f) => {
            let name = f.name.to_string().to_lowercase();
            if FUNCTIONS.contains(&name.as_str()) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(format!("function `{name}` is not allowed in a filter (allowed: {})", FUNCTIONS.join(", ")))
            }
        }
        _ => ControlFlow::Continue(()),
    });
    match verdict {
        ControlFlow::Break(why) => Err(why),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn predicates_over_columns_pass() {
        for ok in [
            "latency_ms > 500",
            "site LIKE '%.io' AND lower(status) = 'down'",
            "ts > now() - INTERVAL '5 minutes'",
            "x IN (1, 2) OR y IS NULL",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn appended_sql_subqueries_and_expensive_functions_are_refused() {
        assert_eq!(check("1=1 UNION SELECT 1").unwrap_err(), "only one predicate is allowed; `UNION` follows it");
        assert_eq!(check("1=1; DROP TABLE x").unwrap_err(), "only one predicate is allowed; `;` follows it");
        assert_eq!(check("x IN (SELECT 1)").unwrap_err(), "subqueries are not allowed");
        assert_eq!(check("EXISTS (SELECT 1)").unwrap_err(), "subqueries are not allowed");
        assert!(check("generate_series(1, 1000000000) IS NOT NULL").unwrap_err().starts_with("function `generate_series` is not allowed"));
        assert!(check("length(repeat('x', 1000000000)) > 0").unwrap_err().starts_with("function `repeat` is not allowed"));
    }
}
