//! Limits on a SQL text, checked on its tokens before DataFusion parses or plans it.
//!
//! sqlparser reads `a OR b OR c …` in a loop but builds a tree as deep as the chain, and
//! DataFusion's planner, optimizer and expression evaluation recurse over it: a `WHERE` of 10,000
//! `OR` terms overflowed the stack and aborted `validate` (and, at reload, the running pipeline),
//! and planning time grew with the square of the terms (2,000 took 1.7 s). Tokens are read in a
//! loop, so counting them is safe at any size.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// A SQL text longer than this is refused.
pub const MAX_SQL_BYTES: usize = 1 << 20;
/// Binary operators (`AND`, `OR`, `=`, `+`, `||`, …) and set operations or joins in one SQL text
/// at most: each makes the tree one level deeper when they are chained.
pub const MAX_SQL_OPERATORS: usize = 1_000;
/// Parentheses nested deeper than this are refused.
pub const MAX_SQL_NESTING: usize = 64;

/// The first limit `sql` exceeds, as the message a user sees. Text the tokenizer refuses passes:
/// DataFusion reports it with its own position.
pub fn check(sql: &str) -> Result<(), String> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!("the SQL is {} bytes long, more than the limit of {MAX_SQL_BYTES}", sql.len()));
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return Ok(());
    };
    let (mut operators, mut depth) = (0usize, 0usize);
    // `*` multiplies only after an operand (`SELECT *`, `count(*)` and `t.*` are no operators).
    let mut after_operand = false;
    for t in tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))) {
        let operand = is_operand(&t.token);
        let was_operand = std::mem::replace(&mut after_operand, operand);
        match &t.token {
            Token::Mul if !was_operand => {}
            Token::LParen => {
                depth += 1;
                if depth > MAX_SQL_NESTING {
                    return Err(format!(
                        "parentheses nested deeper than {MAX_SQL_NESTING} levels (the limit) at line {}, column {}",
                        t.span.start.line, t.span.start.column
                    ));
                }
            }
            Token::RParen => depth = depth.saturating_sub(1),
            token if is_chaining(token) => operators += 1,
            _ => {}
        }
    }
    if operators > MAX_SQL_OPERATORS {
        return Err(format!(
            "the SQL has {operators} operators (AND, OR, comparisons, arithmetic, joins, set operations), more than the limit of \
             {MAX_SQL_OPERATORS}: write a long list of alternatives as `column IN (a, b, …)`"
        ));
    }
    Ok(())
}

/// A token that ends an operand: a value, a name, or a closing parenthesis.
fn is_operand(token: &Token) -> bool {
    match token {
        Token::Word(w) => w.keyword == Keyword::NoKeyword || w.quote_style.is_some(),
        Token::Number(..) | Token::SingleQuotedString(_) | Token::DoubleQuotedString(_) | Token::RParen => true,
        _ => false,
    }
}

/// A token that joins two operands into one node of the tree.
fn is_chaining(token: &Token) -> bool {
    match token {
        Token::Word(w) => {
            matches!(w.keyword, Keyword::AND | Keyword::OR | Keyword::JOIN | Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT)
        }
        Token::DoubleEq
        | Token::Eq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::DuckIntDiv
        | Token::Mod
        | Token::StringConcat
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::ShiftLeft
        | Token::ShiftRight => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ors(n: usize) -> String {
        let terms: Vec<String> = (0..n).map(|i| format!("site = 's{i}'")).collect();
        format!("SELECT * FROM probes WHERE {}", terms.join(" OR "))
    }

    #[test]
    fn long_chains_are_refused_with_the_limit_and_a_way_out() {
        // 500 terms: 499 ORs and 500 `=`.
        assert_eq!(check(&ors(500)), Ok(()));
        assert_eq!(
            check(&ors(10_000)),
            Err("the SQL has 19999 operators (AND, OR, comparisons, arithmetic, joins, set operations), more than the limit of 1000: \
                 write a long list of alternatives as `column IN (a, b, …)`"
                .into())
        );
        let list: Vec<String> = (0..10_000).map(|i| format!("'s{i}'")).collect();
        assert_eq!(check(&format!("SELECT * FROM probes WHERE site IN ({})", list.join(", "))), Ok(()));
        // `*` as "all columns" and operators inside strings and comments are not operators.
        assert_eq!(check(&format!("SELECT count(*), p.* FROM probes p WHERE {}", vec!["latency_ms * 2 > 1"; 300].join(" OR "))), Ok(()));
        assert_eq!(check(&format!("SELECT '{}' AS s FROM probes -- {}", "+".repeat(5_000), "OR ".repeat(5_000))), Ok(()));
    }

    #[test]
    fn nesting_and_size_are_refused() {
        let deep = format!("SELECT {}1{} AS n FROM probes", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(check(&deep), Err("parentheses nested deeper than 64 levels (the limit) at line 1, column 72".into()));
        let huge = format!("SELECT 1 AS n FROM probes -- {}", "x".repeat(MAX_SQL_BYTES));
        assert_eq!(check(&huge), Err(format!("the SQL is {} bytes long, more than the limit of 1048576", huge.len())));
    }
}
