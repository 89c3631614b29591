use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;

use super::*;

fn probes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("site", DataType::Utf8, false),
        Field::new("ms", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
    ]))
}

fn probes(sites: &[&str], ms: &[i64], bodies: &[Option<&str>]) -> RecordBatch {
    RecordBatch::try_new(
        probes_schema(),
        vec![
            Arc::new(StringArray::from(sites.to_vec())),
            Arc::new(Int64Array::from(ms.to_vec())),
            Arc::new(StringArray::from(bodies.to_vec())),
        ],
    )
    .unwrap()
}

fn table(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

#[tokio::test]
async fn plans_once_and_executes_each_batch_independently() {
    let t = SqlTransform::plan(
        "SELECT site, ms * 2 AS double_ms FROM probes WHERE ms > 100 ORDER BY ms DESC",
        &[("probes".into(), probes_schema())],
        &[],
    )
    .await
    .unwrap();
    let names: Vec<_> = t.output_schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["site", "double_ms"]);
    let out = t.execute(0, probes(&["a", "b", "c"], &[50, 300, 200], &[None, None, None])).await.unwrap();
    assert_eq!(table(&out), "+------+-----------+\n| site | double_ms |\n+------+-----------+\n| b    | 600       |\n| c    | 400       |\n+------+-----------+");
    // The second batch sees only its own rows: no state carried over.
    let out = t.execute(0, probes(&["d"], &[150], &[None])).await.unwrap();
    assert_eq!(table(&out), "+------+-----------+\n| site | double_ms |\n+------+-----------+\n| d    | 300       |\n+------+-----------+");
    assert!(t.execute(0, probes(&["e"], &[1], &[None])).await.unwrap().is_empty());
}

#[tokio::test]
async fn aggregates_reexecute_from_scratch() {
    let t = SqlTransform::plan(
        "SELECT site, count(*) AS n, max(ms) AS worst FROM probes GROUP BY site ORDER BY site",
        &[("probes".into(), probes_schema())],
        &[],
    )
    .await
    .unwrap();
    let once = t.execute(0, probes(&["a", "a", "b"], &[1, 9, 4], &[None, None, None])).await.unwrap();
    let twice = t.execute(0, probes(&["a"], &[3], &[None])).await.unwrap();
    assert_eq!(table(&once), "+------+---+-------+\n| site | n | worst |\n+------+---+-------+\n| a    | 2 | 9     |\n| b    | 1 | 4     |\n+------+---+-------+");
    assert_eq!(
        table(&twice),
        "+------+---+-------+\n| site | n | worst |\n+------+---+-------+\n| a    | 1 | 3     |\n+------+---+-------+"
    );
}

#[tokio::test]
async fn named_outputs_are_schema_qualified_tables_and_joins_see_both_inputs() {
    let t = SqlTransform::plan(
        "SELECT p.site, p.ms, d.reason FROM probes p JOIN probes.dead_letter d ON p.site = d.site ORDER BY p.site",
        &[
            ("probes".into(), probes_schema()),
            (
                "probes.dead_letter".into(),
                Arc::new(Schema::new(vec![Field::new("site", DataType::Utf8, false), Field::new("reason", DataType::Utf8, false)])),
            ),
        ],
        &[],
    )
    .await
    .unwrap();
    let dl = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("site", DataType::Utf8, false), Field::new("reason", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["b"])), Arc::new(StringArray::from(vec!["timeout"]))],
    )
    .unwrap();
    for _ in 0..2 {
        let out = t.execute_with(&[(0, vec![probes(&["a", "b"], &[1, 2], &[None, None])]), (1, vec![dl.clone()])]).await.unwrap();
        assert_eq!(
            table(&out),
            "+------+----+---------+\n| site | ms | reason  |\n+------+----+---------+\n| b    | 2  | timeout |\n+------+----+---------+"
        );
    }
}

#[tokio::test]
async fn unknown_columns_fail_to_plan_naming_the_column() {
    let err = SqlTransform::plan("SELECT sight FROM probes", &[("probes".into(), probes_schema())], &[]).await.err().unwrap().to_string();
    assert!(err.contains("sight") && err.contains("probes.site"), "{err}");
}

#[tokio::test]
async fn json_path_returns_the_first_match_as_text() {
    let t = SqlTransform::plan(
        "SELECT json_path(body, '$.status') AS status, json_path(body, '$.items[*].id') AS first_id FROM probes",
        &[("probes".into(), probes_schema())],
        &[],
    )
    .await
    .unwrap();
    let out = t
        .execute(
            0,
            probes(
                &["a", "b", "c", "d"],
                &[1, 2, 3, 4],
                &[Some(r#"{"status":"ok","items":[{"id":7},{"id":8}]}"#), Some("not json"), None, Some(r#"{"status":{"code":1}}"#)],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        table(&out),
        "+------------+----------+\n| status     | first_id |\n+------------+----------+\n| ok         | 7        |\n|            |          |\n|            |          |\n| {\"code\":1} |          |\n+------------+----------+"
    );
    let bad =
        SqlTransform::plan("SELECT json_path(body, '$[') AS x FROM probes", &[("probes".into(), probes_schema())], &[]).await.unwrap();
    let err = bad.execute(0, probes(&["a"], &[1], &[Some("{}")])).await.unwrap_err().to_string();
    assert!(err.contains("json_path: invalid JSONPath `$[`"), "{err}");
}
