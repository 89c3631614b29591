//! The pipeline DAG as Mermaid flowchart text (`tributary graph`).

use crate::config::{ComponentDecl, Kind};

/// Sources are stadiums, transforms rectangles, sinks cylinders-ish (subroutines); an edge from a
/// named output (`webex.utilization`, `db.dead_letter`) carries the output's name.
pub fn render(decls: &[ComponentDecl]) -> String {
    let mut out = String::from("flowchart LR\n");
    for c in decls {
        let label = format!("{}<br/><small>{}</small>", c.id, c.type_name);
        let node = match c.kind {
            Kind::Source => format!("  {}([\"{label}\"])\n", c.id),
            Kind::Transform => format!("  {}[\"{label}\"]\n", c.id),
            Kind::Sink => format!("  {}[[\"{label}\"]]\n", c.id),
        };
        out.push_str(&node);
    }
    for c in decls {
        for input in &c.inputs {
            match input.split_once('.') {
                None => out.push_str(&format!("  {input} --> {}\n", c.id)),
                Some((from, output)) => out.push_str(&format!("  {from} -- {output} --> {}\n", c.id)),
            }
        }
    }
    out
}
