use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;

use super::*;

fn probes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("target", DataType::Utf8, false), Field::new("ms", DataType::Int64, false)]))
}

fn probes(targets: &[&str], ms: &[i64]) -> RecordBatch {
    RecordBatch::try_new(probes_schema(), vec![Arc::new(StringArray::from(targets.to_vec())), Arc::new(Int64Array::from(ms.to_vec()))])
        .unwrap()
}

fn sites(rows: &[(&str, &str)]) -> (SchemaRef, RecordBatch) {
    let schema = Arc::new(Schema::new(vec![Field::new("target", DataType::Utf8, true), Field::new("region", DataType::Utf8, true)]));
    let targets: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let regions: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(targets)), Arc::new(StringArray::from(regions))]).unwrap();
    (schema, batch)
}

fn text(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

const ENRICH: &str = "SELECT p.target, p.ms, s.region FROM probes p LEFT JOIN sites s ON p.target = s.target ORDER BY p.ms";

async fn enrich_over(table: &Arc<LookupTable>) -> SqlTransform {
    SqlTransform::plan(ENRICH, &[("probes".into(), probes_schema())], std::slice::from_ref(table)).await.unwrap()
}

#[tokio::test]
async fn a_lookup_table_enriches_each_batch_and_unmatched_rows_keep_nulls() {
    let (schema, rows) = sites(&[("a.example", "emea"), ("b.example", "amer")]);
    let table = Arc::new(LookupTable::new("sites".into(), schema));
    table.replace(vec![rows]);
    let t = enrich_over(&table).await;
    let out = t.execute(0, probes(&["b.example", "x.example", "a.example"], &[10, 20, 30])).await.unwrap();
    assert_eq!(
        text(&out),
        "+-----------+----+--------+\n\
         | target    | ms | region |\n\
         +-----------+----+--------+\n\
         | b.example | 10 | amer   |\n\
         | x.example | 20 |        |\n\
         | a.example | 30 | emea   |\n\
         +-----------+----+--------+"
    );
    // A join with a table is not a join of two inputs: it needs no window.
    assert_eq!(t.joined_inputs(), None);
}

#[tokio::test]
async fn the_table_is_hashed_once_per_version_and_a_refresh_is_seen_whole_by_the_next_batch() {
    let (schema, rows) = sites(&[("a.example", "emea")]);
    let table = Arc::new(LookupTable::new("sites".into(), schema));
    table.replace(vec![rows]);
    let t = enrich_over(&table).await;
    for ms in [1, 2, 3] {
        let out = t.execute(0, probes(&["a.example"], &[ms])).await.unwrap();
        assert!(text(&out).contains(&format!("| a.example | {ms}  | emea   |")), "{}", text(&out));
    }
    assert_eq!(t.lookup_scans(), vec![1], "three batches, one build of the table");

    let (_, refreshed) = sites(&[("a.example", "apac"), ("b.example", "amer")]);
    table.replace(vec![refreshed]);
    let out = t.execute(0, probes(&["a.example", "b.example"], &[4, 5])).await.unwrap();
    assert_eq!(
        text(&out),
        "+-----------+----+--------+\n\
         | target    | ms | region |\n\
         +-----------+----+--------+\n\
         | a.example | 4  | apac   |\n\
         | b.example | 5  | amer   |\n\
         +-----------+----+--------+"
    );
    t.execute(0, probes(&["b.example"], &[6])).await.unwrap();
    assert_eq!(t.lookup_scans(), vec![2], "one more build for the new version only");
}

#[tokio::test]
async fn the_table_is_the_build_side_whichever_side_the_sql_names_it() {
    let (schema, rows) = sites(&[("a.example", "emea")]);
    let table = Arc::new(LookupTable::new("sites".into(), schema));
    table.replace(vec![rows]);
    for sql in [
        "SELECT p.ms, s.region FROM probes p JOIN sites s ON p.target = s.target",
        "SELECT p.ms, s.region FROM sites s JOIN probes p ON p.target = s.target",
        "SELECT p.ms, s.region FROM sites s RIGHT JOIN probes p ON p.target = s.target",
    ] {
        let t = SqlTransform::plan(sql, &[("probes".into(), probes_schema())], std::slice::from_ref(&table)).await.unwrap();
        for ms in [1, 2] {
            let out = t.execute(0, probes(&["a.example"], &[ms])).await.unwrap();
            assert_eq!(text(&out).lines().nth(3), Some(format!("| {ms}  | emea   |").as_str()), "{sql}");
        }
        assert_eq!(t.lookup_scans(), vec![1], "{sql}");
    }
}

#[tokio::test]
async fn rows_of_the_table_nothing_matched_are_not_emitted_per_batch_but_the_query_still_answers() {
    // `sites LEFT JOIN probes` asks for every site, matched or not: the table is then read by
    // every execution (its build cannot be kept), and the answer stays right.
    let (schema, rows) = sites(&[("a.example", "emea"), ("b.example", "amer")]);
    let table = Arc::new(LookupTable::new("sites".into(), schema));
    table.replace(vec![rows]);
    let sql = "SELECT s.target, p.ms FROM sites s LEFT JOIN probes p ON p.target = s.target ORDER BY s.target";
    let t = SqlTransform::plan(sql, &[("probes".into(), probes_schema())], std::slice::from_ref(&table)).await.unwrap();
    for _ in 0..2 {
        let out = t.execute(0, probes(&["a.example"], &[7])).await.unwrap();
        assert_eq!(
            text(&out),
            "+-----------+----+\n\
             | target    | ms |\n\
             +-----------+----+\n\
             | a.example | 7  |\n\
             | b.example |    |\n\
             +-----------+----+"
        );
    }
    assert_eq!(t.lookup_scans(), vec![2]);
}
