//! The split events reader against the one-reader path it replaces: same table, same users in
//! the same order, same fingerprint, same bad-row messages, whatever the block size.

use super::super::{read_dataset_with, Budget, ReadOptions, MAX_BAD_ROW_SAMPLES};
use super::*;
use crate::features::hash_str;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Everything an events read leaves behind, in a comparable form.
#[derive(Debug, PartialEq)]
struct Outcome {
    user_ids: Vec<String>,
    user: Vec<u32>,
    ts: Vec<i64>,
    kind: Vec<EventKind>,
    amount: Vec<u32>,
    watch_seconds: Vec<u32>,
    room: Vec<u32>,
    category: Vec<u32>,
    columns: crate::features::ColumnsPresent,
    bad: u64,
    samples: Vec<String>,
    fingerprint: String,
}

/// Reads `path` as an events file with `split`: the outcome (or the error's message) and the
/// bytes parsed in blocks.
fn read_split(path: &Path, split: Split, max_bad_rows: usize) -> (Result<Outcome, String>, u64) {
    let mut table = EventTable::default();
    let mut budget = Budget::new(max_bad_rows);
    let mut hasher = Sha256::new();
    match read_events(
        path,
        &mut table,
        &mut budget,
        &mut hasher,
        split,
        crate::features::DEFAULT_EARLIEST_EVENT,
        &std::sync::Arc::new(crate::features::vocabulary::KindResolver::CANONICAL),
    ) {
        Err(e) => (Err(e.to_string()), 0),
        Ok(split_bytes) => {
            assert_eq!(table.index.len(), table.n_users());
            for (i, id) in table.user_ids.iter().enumerate() {
                assert_eq!(table.index.get(id), Some(&(i as u32)));
            }
            let t = table;
            let outcome = Outcome {
                user_ids: t.user_ids,
                user: t.user,
                ts: t.ts,
                kind: t.kind,
                amount: t.amount.iter().map(|a| a.to_bits()).collect(),
                watch_seconds: t.watch_seconds,
                room: t.room,
                category: t.category,
                columns: t.columns,
                bad: budget.bad,
                samples: budget.samples,
                fingerprint: hex::encode(hasher.finalize()),
            };
            (Ok(outcome), split_bytes)
        }
    }
}

fn split(block: usize, workers: usize) -> Split {
    Split { block, workers }
}

/// Reads `path` one-reader and split every way in `blocks` × 1..=3 workers; all must agree.
/// Answers the one-reader outcome and, per split, the bytes parsed in blocks.
fn assert_splits_agree(
    path: &Path,
    blocks: &[usize],
    max_bad_rows: usize,
) -> (Result<Outcome, String>, Vec<u64>) {
    let (expected, none) = read_split(path, Split::SEQUENTIAL, max_bad_rows);
    assert_eq!(none, 0);
    let mut covered = Vec::new();
    for &block in blocks {
        for workers in 1..=3 {
            let (got, bytes) = read_split(path, split(block, workers), max_bad_rows);
            assert!(
                got == expected,
                "block {block}, {workers} workers: {:?}\nexpected {:?}",
                got.as_ref().map(|o| (&o.samples, o.ts.len())),
                expected.as_ref().map(|o| (&o.samples, o.ts.len()))
            );
            covered.push(bytes);
        }
    }
    (expected, covered)
}

const HEADER: &str = "user_id,ts,kind,amount,watch_seconds,room_id,category";

/// A good events row of user `u` (ids of every length class, some non-ASCII).
fn good_row(rng: &mut Xoshiro256PlusPlus, u: usize) -> String {
    let id = match u % 5 {
        0 => format!("u{u:07}"),
        1 => format!("user-with-a-long-id-beyond-31-bytes-{u}"),
        2 => format!("é{u}"),
        _ => format!("u{u}"),
    };
    let day = rng.gen_range(1..=28);
    let ts = if rng.gen_bool(0.5) {
        format!(
            "2026-05-{day:02}T{:02}:{:02}:{:02}Z",
            rng.gen_range(0..24),
            rng.gen_range(0..60),
            rng.gen_range(0..60)
        )
    } else {
        format!("2026-04-{day:02}")
    };
    let (kind, amount) = match rng.gen_range(0..4) {
        0 => (
            "order",
            format!("{}.{:02}", rng.gen_range(0..500), rng.gen_range(0..100)),
        ),
        1 => ("View", String::new()),
        2 => ("gift", rng.gen_range(0..9).to_string()),
        _ => ("like", String::new()),
    };
    let watch = if rng.gen_bool(0.5) {
        rng.gen_range(0..20_000).to_string()
    } else {
        String::new()
    };
    let room = if rng.gen_bool(0.8) {
        format!("room_{}", rng.gen_range(0..50))
    } else {
        String::new()
    };
    let cat = ["home", "beauty", "", "fashion"][rng.gen_range(0..4)];
    format!("{id},{ts},{kind},{amount},{watch},{room},{cat}")
}

/// A bad events row, and the column it is refused at (none: a row of the wrong width).
fn bad_row(rng: &mut Xoshiro256PlusPlus) -> (&'static str, Option<(usize, &'static str)>) {
    [
        ("u1,never,view,,,,", Some((2, "ts"))),
        ("u2,2026-05-01,order,-3,,,", Some((4, "amount"))),
        // An unmapped kind is no bad row any more (it ends the read whatever the budget): a bad
        // amount stands in for it.
        ("u3,2026-05-01,order,abc,,,", Some((4, "amount"))),
        ("u4,2026-05-01,view,,,", None),
        (" ,2026-05-01,view,,,,", Some((1, "user_id"))),
        ("u5,2026-05-01,view,,1.5,,", Some((5, "watch_seconds"))),
        ("ghost,2026-05-01,order,,,,", Some((4, "amount"))),
    ][rng.gen_range(0..7)]
}

/// A bad row's line and column.
type Place = (u64, Option<(usize, &'static str)>);

/// How a message names a bad row's place.
fn named(place: Place) -> String {
    match place {
        (line, Some((col, name))) => format!("events.csv:{line}:{col} (column {name})"),
        (line, None) => format!("events.csv:{line}: expected 7 fields as in the header, found 6"),
    }
}

/// A generated events file: users in runs and interleaved, blank lines, LF and CRLF endings, and
/// (if `bad_every` > 0) a bad row about every `bad_every` rows. Answers the text and, per bad
/// row, its physical line, column position and name.
fn generated(seed: u64, rows: usize, bad_every: usize) -> (String, Vec<Place>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut text = format!("{HEADER}\n");
    let mut line = 2;
    let mut bad = Vec::new();
    let mut user = 0;
    for _ in 0..rows {
        if rng.gen_bool(0.03) {
            text.push_str(if rng.gen_bool(0.5) { "\n" } else { "\r\n" });
            line += 1;
        }
        if rng.gen_bool(0.3) {
            user = rng.gen_range(0..200);
        }
        if bad_every > 0 && rng.gen_range(0..bad_every) == 0 {
            let (row, col) = bad_row(&mut rng);
            text.push_str(row);
            bad.push((line, col));
        } else {
            text.push_str(&good_row(&mut rng, user));
        }
        text.push_str(if rng.gen_bool(0.3) { "\r\n" } else { "\n" });
        line += 1;
    }
    (text, bad)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const TINY: [usize; 7] = [64, 65, 97, 128, 300, 1000, 4096];

#[test]
fn split_reads_match_the_one_reader_path_on_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _) = generated(7, 3000, 0);
    let path = write(dir.path(), "events.csv", &text);
    let (expected, covered) = assert_splits_agree(&path, &TINY, 0);
    let expected = expected.unwrap();
    assert_eq!(expected.ts.len(), 3000);
    assert!(expected.user_ids.len() > 100);
    assert_eq!(
        expected.fingerprint,
        hex::encode(Sha256::digest(text.as_bytes()))
    );
    // Without quotes every split read the whole file in blocks, or up to the first line longer
    // than a block.
    let whole = text.len() as u64;
    assert!(covered.iter().all(|&b| b > 0), "{covered:?}");
    assert!(covered[6..].iter().all(|&b| b == whole), "{covered:?}");

    // With a users table, through `read_dataset`: the same data set, fingerprint over both files.
    let users: String = std::iter::once("user_id,registered_at,persona\n".to_string())
        .chain((0..300).map(|u| format!("u{u},2026-01-{:02},p{}\n", u % 28 + 1, u % 3)))
        .collect();
    write(dir.path(), "users.csv", &users);
    let read = |s| read_dataset_with(dir.path(), &ReadOptions::default(), s).unwrap();
    let one = read(Split::SEQUENTIAL);
    assert_eq!(
        one.report.fingerprint,
        hex::encode(Sha256::digest(format!("{text}{users}").as_bytes()))
    );
    for s in [split(64, 2), split(1000, 3), Split::auto()] {
        let d = read(s);
        assert_eq!(d.report, one.report, "{s:?}");
        assert_eq!(d.events.user_ids, one.events.user_ids, "{s:?}");
        assert_eq!(d.events.user, one.events.user, "{s:?}");
        assert_eq!(d.events.ts, one.events.ts, "{s:?}");
        assert_eq!(d.events.registered_at, one.events.registered_at, "{s:?}");
    }
}

#[test]
fn a_bad_row_in_a_late_block_names_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    // Many rows, CRLF and LF endings and blank lines before one bad row near the end.
    let (mut text, _) = generated(11, 600, 0);
    text.push_str("\r\n\n\r\n");
    let line = text.matches('\n').count() as u64 + 1;
    text.push_str("u9,2026-05-01,nope,,,,\r\nu9,2026-05-01,view,,,,\r\n");
    let path = write(dir.path(), "events.csv", &text);
    let place = format!("events.csv:{line}:3 (column kind)");
    let (expected, covered) = assert_splits_agree(&path, &TINY, 0);
    let msg = expected.unwrap_err();
    assert!(msg.contains(&place), "{msg:?} should name {place:?}");
    assert!(
        covered.iter().all(|&b| b == 0),
        "a failed read reports no blocks"
    );
    // Without the bad row, every split reads the whole file in blocks: the row was in one.
    let good = text.rsplit_once("u9,2026-05-01,nope,,,,").unwrap().0;
    let path_good = write(dir.path(), "good.csv", good);
    let (ok, covered) = assert_splits_agree(&path_good, &TINY, 0);
    assert!(ok.is_ok());
    assert!(
        covered[6..].iter().all(|&b| b == good.len() as u64),
        "{covered:?}"
    );
    for block in [64, 200, 1 << 20] {
        let (got, _) = read_split(&path, split(block, 2), 0);
        assert_eq!(got.unwrap_err(), msg, "block {block}");
    }

    // Every bad row of a file with bad rows everywhere, at every block alignment.
    let (text, bad) = generated(12, 800, 25);
    let path = write(dir.path(), "events.csv", &text);
    let blocks: Vec<usize> = (64..140).step_by(3).chain([1000, 4096]).collect();
    let (expected, _) = assert_splits_agree(&path, &blocks, usize::MAX);
    let expected = expected.unwrap();
    assert_eq!(expected.bad, bad.len() as u64);
    assert!(bad.len() > 15);
    for (&place, sample) in bad.iter().zip(&expected.samples) {
        let place = named(place);
        assert!(sample.contains(&place), "{sample:?} should name {place:?}");
    }
}

#[test]
fn quoted_fields_with_commas_and_newlines_read_as_with_one_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = generated(21, 400, 0);
    let (tail, _) = generated(22, 400, 40);
    let tail = tail.split_once('\n').unwrap().1;
    let text = format!(
        "{head}u7,2026-05-01,view,,,\"room, with a comma\",\"two\nlines\"\r\n\n{tail}\"u8\",2026-05-02,like,,,,\"a\"\"b\"\n"
    );
    let path = write(dir.path(), "events.csv", &text);
    let (expected, covered) = assert_splits_agree(&path, &TINY, usize::MAX);
    let expected = expected.unwrap();
    assert!(expected.bad > 0);
    assert!(expected.user_ids.iter().any(|u| u == "u8"));
    let i = expected.ts.len() - 1;
    assert_eq!(expected.category[i], hash_str("a\"b"));
    let quoted = expected
        .room
        .iter()
        .position(|&r| r == hash_str("room, with a comma"))
        .unwrap();
    assert_eq!(expected.category[quoted], hash_str("two\nlines"));
    // The rows before the first quote went through the workers, the rest through one reader.
    let quote = text.find('"').unwrap() as u64;
    assert!(
        covered.iter().all(|&b| b > 0 && b <= quote),
        "{covered:?}, quote at {quote}"
    );

    // A quote in the header: one reader from the start.
    let text = "\"user_id\",ts,kind\nu1,2026-05-01,view\n";
    let path = write(dir.path(), "events.csv", text);
    let (expected, covered) = assert_splits_agree(&path, &[64], 0);
    assert_eq!(expected.unwrap().ts.len(), 1);
    assert!(covered.iter().all(|&b| b == 0));
}

#[test]
fn the_bad_row_budget_counts_across_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (text, bad) = generated(31, 1500, 60);
    let path = write(dir.path(), "events.csv", &text);
    let n = bad.len();
    assert!(n > MAX_BAD_ROW_SAMPLES + 5, "{n}");

    // Exactly the budget: read, every bad row counted, the first ten kept in file order.
    let (expected, _) = assert_splits_agree(&path, &[64, 301, 4096], n);
    let expected = expected.unwrap();
    assert_eq!(expected.bad, n as u64);
    assert_eq!(expected.samples.len(), MAX_BAD_ROW_SAMPLES);
    for (&place, sample) in bad.iter().zip(&expected.samples) {
        assert!(sample.contains(&named(place)), "{sample}");
    }

    // One less: the error names the last bad row, the first over the limit.
    let (expected, _) = assert_splits_agree(&path, &[64, 301, 4096], n - 1);
    let msg = expected.unwrap_err();
    assert!(
        msg.contains(&format!("more than {} bad rows", n - 1)) && msg.contains(&named(bad[n - 1])),
        "{msg}"
    );

    // No budget: the first bad row is the error.
    let (expected, _) = assert_splits_agree(&path, &[64, 4096], 0);
    let msg = expected.unwrap_err();
    assert!(
        !msg.contains("bad rows") && msg.contains(&named(bad[0])),
        "{msg}"
    );
}

#[test]
fn lines_longer_than_a_block_and_byte_order_marks_read_as_with_one_reader() {
    let dir = tempfile::tempdir().unwrap();
    // A byte-order mark opens the file (the header's, dropped) and some rows (part of the id:
    // a block starting on such a row must keep it).
    let (text, _) = generated(41, 300, 30);
    let mut marked = String::from("\u{feff}");
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i % 9 == 5 {
            marked.push_str("\u{feff}u1,2026-05-01,view,,,,\n");
        }
        marked.push_str(line);
    }
    let blocks: Vec<usize> = (64..200).chain([4096]).collect();
    let path = write(dir.path(), "events.csv", &marked);
    let (expected, covered) = assert_splits_agree(&path, &blocks, usize::MAX);
    let expected = expected.unwrap();
    assert!(expected.user_ids.iter().any(|u| u == "\u{feff}u1"));
    assert!(!expected.user_ids.iter().any(|u| u == "u1"));
    assert!(covered.contains(&(marked.len() as u64)));

    // A line longer than a block: one reader from its block on.
    let long = format!("u1,2026-05-01,view,,,{},x", "r".repeat(500));
    let (a, b) = text.split_at(text.len() / 2);
    let cut = a.len() + b.find('\n').unwrap() + 1;
    let text = format!("{}{long}\n{}", &text[..cut], &text[cut..]);
    let path = write(dir.path(), "events.csv", &text);
    let (expected, covered) = assert_splits_agree(&path, &TINY, usize::MAX);
    assert!(expected.unwrap().bad > 0);
    assert!(covered.iter().any(|&b| b > 0 && b < text.len() as u64));
    assert!(covered.contains(&(text.len() as u64)));
}

/// Random CSV-ish text from a small alphabet (quotes, CR, LF, commas, byte-order marks, bad
/// UTF-8) must read the same however it is split.
#[test]
fn random_text_reads_the_same_however_it_is_split() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(51);
    let dir = tempfile::tempdir().unwrap();
    let tokens: [&[u8]; 14] = [
        b"u1,2026-05-01,view,,,,\n",
        b"u2,2026-05-02T10:00:00Z,order,3.5,12,r,c\n",
        b"\xc3\xa9,2026-05-03,like,,,,\r\n",
        b",,",
        b"\n",
        b"\r",
        b"\r\n",
        b"\"",
        b",",
        b"\xef\xbb\xbf",
        b"\xff",
        b"x",
        b"u3,never,view,,,,\n",
        b"u4,2026-05-01,gift,1,,,\n",
    ];
    for case in 0..300 {
        let mut text = HEADER.as_bytes().to_vec();
        text.push(b'\n');
        let quotes = rng.gen_bool(0.3);
        for _ in 0..rng.gen_range(0..120) {
            let t = if rng.gen_bool(0.7) {
                tokens[rng.gen_range(0..2)]
            } else {
                tokens[rng.gen_range(0..tokens.len())]
            };
            if !quotes && t == b"\"" {
                continue;
            }
            text.extend_from_slice(t);
        }
        let path = dir.path().join("events.csv");
        std::fs::write(&path, &text).unwrap();
        let budget = rng.gen_range(0..30);
        let (expected, _) = read_split(&path, Split::SEQUENTIAL, budget);
        for _ in 0..4 {
            let s = split(rng.gen_range(1..200), rng.gen_range(1..=3));
            let (got, _) = read_split(&path, s, budget);
            assert!(
                got == expected,
                "case {case}, {s:?}, budget {budget}: {got:?}\nexpected {expected:?}\ntext {:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}

#[test]
fn wide_tables_and_rows_with_many_fields_read_as_with_one_reader() {
    let dir = tempfile::tempdir().unwrap();
    // 40 columns, more than the direct splitter takes: its blocks go through the csv crate.
    let extra: Vec<String> = (0..33).map(|i| format!("x{i}")).collect();
    let mut text = format!("{HEADER},{}\n", extra.join(","));
    for u in 0..300 {
        text.push_str(&format!(
            "u{},2026-05-{:02},view,,{u},r{},c{}\n",
            u % 40,
            u % 28 + 1,
            u % 7,
            ",".repeat(33)
        ));
    }
    let path = write(dir.path(), "events.csv", &text);
    let (expected, covered) = assert_splits_agree(&path, &[300, 1000, 4096], 0);
    let expected = expected.unwrap();
    assert_eq!(expected.ts.len(), 300);
    assert_eq!(expected.watch_seconds[299], 299);
    assert!(
        covered.iter().all(|&b| b == text.len() as u64),
        "{covered:?}"
    );

    // A 7-column file with one row of 40 fields: counted past the splitter's 32, named exactly.
    let (mut text, _) = generated(31, 200, 0);
    let line = text.matches('\n').count() as u64 + 1;
    text.push_str(&format!("u1,2026-05-01,view{}\n", ",".repeat(37)));
    text.push_str("u1,2026-05-02,view,,,,\n");
    let path = write(dir.path(), "events.csv", &text);
    let (expected, covered) = assert_splits_agree(&path, &TINY, 1);
    let expected = expected.unwrap();
    assert_eq!(expected.bad, 1);
    let place = format!("events.csv:{line}: expected 7 fields as in the header, found 40");
    assert!(
        expected.samples[0].contains(&place),
        "{:?}",
        expected.samples
    );
    assert!(
        covered[6..].iter().all(|&b| b == text.len() as u64),
        "{covered:?}"
    );
}
