//! Unit tests of the private parts: rank fusion, titles of last resort, text tidying.

use flowbot_core::vector::Hit;
use serde_json::{Map, json};

use super::load::{DocKind, Document, LoadOptions};
use super::search::{RRF_K, fuse, snippet};

fn hit(id: &str, score: f32) -> Hit {
    let mut payload = Map::new();
    payload.insert("text".into(), json!(format!("text of {id}")));
    payload.insert("source".into(), json!(format!("{id}.md")));
    payload.insert("page".into(), json!(4));
    Hit {
        id: id.into(),
        score,
        payload,
    }
}

#[test]
fn reciprocal_rank_fusion_adds_both_ranks() {
    let vector = [hit("a", 0.9), hit("b", 0.8), hit("c", 0.7)];
    let keyword = [hit("c", 5.0), hit("d", 4.0), hit("a", 1.0)];
    let fused = fuse(&vector, Some(&keyword));
    let ids: Vec<&str> = fused.iter().map(|p| p.id.as_str()).collect();
    // a: 1/61 + 1/63; c: 1/63 + 1/61 (a tie, broken by the vector score); b: 1/62; d: 1/62
    // (a tie, broken by having a vector score).
    assert_eq!(ids, ["a", "c", "b", "d"]);
    let r = |rank: f32| 1.0 / (RRF_K + rank);
    assert!((fused[0].score - (r(1.0) + r(3.0))).abs() < 1e-7);
    assert_eq!(fused[1].keyword_rank, Some(1));
    assert_eq!(fused[1].vector_score, Some(0.7));
    assert_eq!(fused[3].vector_score, None);
    assert_eq!(fused[0].page, Some(4));
    assert_eq!(fused[0].source, "a.md");
    // Without a keyword list, the vector scores stand.
    let plain = fuse(&vector, None);
    assert_eq!(plain[0].score, 0.9);
    assert_eq!(plain[2].keyword_rank, None);
}

#[test]
fn titles_fall_back_to_the_name_of_the_file_or_page() {
    let load = |source: &str| {
        Document::from_bytes(source, DocKind::Text, b"words", &LoadOptions::default())
            .map(|d| d.title)
            .ok()
    };
    assert_eq!(load("dir/notes.v2.txt").as_deref(), Some("notes.v2"));
    assert_eq!(
        load("https://x.example/help/faq?x=1").as_deref(),
        Some("faq")
    );
    assert_eq!(load("C:\\docs\\readme.txt").as_deref(), Some("readme"));
    assert_eq!(load(".env").as_deref(), Some(".env"));
}

#[test]
fn snippets_cut_at_a_word() {
    assert_eq!(snippet("short  text\nhere", 50), "short text here");
    assert_eq!(snippet("one two three four", 10), "one two…");
}
