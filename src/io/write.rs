//! Tables out: the write errors every table writer shares, and scored users as CSV or Parquet,
//! chosen by the output's extension.
//!
//! Rows go to an [`AtomicFile`] that [`ScoreWriter::finish`] puts in place: a reader never sees
//! a half-written file under the final name, and a writer dropped before `finish` (an error
//! upstream) removes its temporary file. The generator's writers
//! (`crate::generate::writer`) report through the same [`WriteError`].

use arrow_array::builder::{Float64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::fmt::Write as _;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::atomic::{AtomicError, AtomicFile};

/// Columns of the scores table, in this order in both formats.
pub(crate) const SCORE_COLUMNS: [&str; 16] = [
    "user_id",
    "tier_id",
    "tier_name",
    "churn_probability",
    "risk_level",
    "risk_percentile",
    "rfm_segment",
    "lifecycle_stage",
    "top_factors",
    "clv",
    "expected_orders",
    "p_alive",
    "value_at_risk",
    "interests",
    "channels",
    "rooms",
];

/// Rows per Parquet record batch.
pub(crate) const PARQUET_BATCH_ROWS: usize = 1 << 16;

/// One scored user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreRow<'a> {
    pub user_id: &'a str,
    pub tier_id: &'a str,
    pub tier_name: &'a str,
    /// Written with 6 decimals in CSV, in full in Parquet.
    pub churn_probability: f64,
    pub risk_level: &'a str,
    /// 0-100; written with 2 decimals in CSV, in full in Parquet.
    pub risk_percentile: f64,
    pub rfm_segment: &'a str,
    pub lifecycle_stage: &'a str,
    pub top_factors: &'a str,
    /// The value figures (`crate::model::btyd`): CLV and value at risk with 2 decimals in CSV,
    /// expected orders and P(alive) with 4; in full in Parquet.
    pub clv: f64,
    pub expected_orders: f64,
    pub p_alive: f64,
    pub value_at_risk: f64,
    /// The user's interest categories, highest score first, joined by `; ` (empty: none).
    pub interests: &'a str,
    /// The channel mix as `channel=spend_share/activity_share` joined by `; ` (empty without
    /// channel data).
    pub channels: &'a str,
    /// The user's top live rooms, highest score first, joined by `; ` like `interests` (empty:
    /// none, as on a data set without a `room_id` column).
    pub rooms: &'a str,
}

/// What went wrong underneath a [`WriteError::Write`]: the table writer's own failure, before
/// it is tied to a file.
#[derive(Debug, thiserror::Error)]
pub enum WriteCause {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// A failure writing a table (scored users, the generated tables), naming the file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: unsupported output type {ext:?} (expected .csv or .parquet)", .path.display())]
    UnsupportedExtension { path: PathBuf, ext: String },
    #[error("cannot create output directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: WriteCause,
    },
    /// Creating the temporary file, or putting it in place.
    #[error(transparent)]
    Atomic(#[from] AtomicError),
}

impl WriteError {
    /// Ties a table writer's failure to the file it was writing.
    pub fn write(path: &Path) -> impl Fn(WriteCause) -> WriteError + '_ {
        move |source| WriteError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let number = |name: &str| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        text("user_id"),
        text("tier_id"),
        text("tier_name"),
        number("churn_probability"),
        text("risk_level"),
        number("risk_percentile"),
        text("rfm_segment"),
        text("lifecycle_stage"),
        text("top_factors"),
        number("clv"),
        number("expected_orders"),
        number("p_alive"),
        number("value_at_risk"),
        text("interests"),
        text("channels"),
        text("rooms"),
    ]))
}

/// Record batches encoded ahead of the writer's thread: at most this many wait for the encoder.
const BATCHES_QUEUED: usize = 2;

/// Where a [`ParquetSink`]'s record batches are encoded (Parquet pages, Snappy, the file).
enum Encoder {
    /// On the caller's thread, as each batch is flushed.
    Inline(Box<ArrowWriter<AtomicFile>>),
    /// On a thread of its own, while the caller builds the next batch: the same
    /// [`ArrowWriter`] gets the same batches in the same order, so the file is the same byte
    /// for byte. The thread hands the writer back when the queue closes, or the first error.
    Thread {
        queue: std::sync::mpsc::SyncSender<RecordBatch>,
        thread: std::thread::JoinHandle<Result<ArrowWriter<AtomicFile>, ParquetError>>,
    },
}

impl Encoder {
    fn new(writer: ArrowWriter<AtomicFile>, threaded: bool) -> Result<Encoder, WriteCause> {
        if !threaded {
            return Ok(Encoder::Inline(Box::new(writer)));
        }
        let (queue, batches) = std::sync::mpsc::sync_channel::<RecordBatch>(BATCHES_QUEUED);
        let thread = std::thread::Builder::new()
            .name("parquet-encoder".into())
            .spawn(move || {
                let mut writer = writer;
                for batch in batches {
                    writer.write(&batch)?;
                }
                Ok(writer)
            })?;
        Ok(Encoder::Thread { queue, thread })
    }

    fn write(&mut self, batch: RecordBatch) -> Result<(), WriteCause> {
        match self {
            Encoder::Inline(w) => Ok(w.write(&batch)?),
            // A closed queue: the thread stopped on an error, which `finish` reports.
            Encoder::Thread { queue, .. } => match queue.send(batch) {
                Ok(()) => Ok(()),
                Err(_) => Err(WriteCause::Io(io::Error::other(
                    "the Parquet encoder stopped (its error follows at finish)",
                ))),
            },
        }
    }

    /// Waits for the batches queued, writes the footer; the file, to be committed.
    fn finish(self) -> Result<AtomicFile, WriteCause> {
        let writer = match self {
            Encoder::Inline(w) => *w,
            Encoder::Thread { queue, thread } => {
                drop(queue);
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?
            }
        };
        Ok(writer.into_inner()?)
    }
}

/// Column builders for the rows not yet flushed.
struct ParquetSink {
    /// `None` only once finished or failed (then the temporary file is gone).
    encoder: Option<Encoder>,
    schema: SchemaRef,
    text: [StringBuilder; 10],
    numbers: [Float64Builder; 6],
    pending: usize,
}

impl ParquetSink {
    /// `threaded`: encode on a thread of its own (see [`Encoder`]).
    fn new(file: AtomicFile, threaded: bool) -> Result<Self, WriteCause> {
        let schema = schema();
        // Dictionary encoding pays for the low-cardinality labels; on the per-user unique
        // columns it only costs a hash per value before falling back to plain encoding.
        let unique = [
            "user_id",
            "churn_probability",
            "risk_percentile",
            "top_factors",
            "clv",
            "expected_orders",
            "p_alive",
            "value_at_risk",
            "interests",
            "channels",
            "rooms",
        ];
        let props = unique
            .into_iter()
            .fold(
                WriterProperties::builder().set_compression(Compression::SNAPPY),
                |b, c| b.set_column_dictionary_enabled(ColumnPath::from(c), false),
            )
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        Ok(ParquetSink {
            encoder: Some(Encoder::new(writer, threaded)?),
            schema,
            text: std::array::from_fn(|_| {
                StringBuilder::with_capacity(PARQUET_BATCH_ROWS, PARQUET_BATCH_ROWS * 8)
            }),
            numbers: std::array::from_fn(|_| Float64Builder::with_capacity(PARQUET_BATCH_ROWS)),
            pending: 0,
        })
    }

    fn write(&mut self, r: &ScoreRow<'_>) -> Result<(), WriteCause> {
        let [user, tier_id, tier_name, risk_level, rfm, stage, factors, interests, channels, rooms] =
            &mut self.text;
        interests.append_value(r.interests);
        channels.append_value(r.channels);
        rooms.append_value(r.rooms);
        user.append_value(r.user_id);
        tier_id.append_value(r.tier_id);
        tier_name.append_value(r.tier_name);
        risk_level.append_value(r.risk_level);
        rfm.append_value(r.rfm_segment);
        stage.append_value(r.lifecycle_stage);
        factors.append_value(r.top_factors);
        let [churn, percentile, clv, orders, alive, var] = &mut self.numbers;
        churn.append_value(r.churn_probability);
        percentile.append_value(r.risk_percentile);
        clv.append_value(r.clv);
        orders.append_value(r.expected_orders);
        alive.append_value(r.p_alive);
        var.append_value(r.value_at_risk);
        self.pending += 1;
        if self.pending >= PARQUET_BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WriteCause> {
        if self.pending == 0 {
            return Ok(());
        }
        let [user, tier_id, tier_name, risk_level, rfm, stage, factors, interests, channels, rooms] =
            &mut self.text;
        let [churn, percentile, clv, orders, alive, var] = &mut self.numbers;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(user.finish()),
            Arc::new(tier_id.finish()),
            Arc::new(tier_name.finish()),
            Arc::new(churn.finish()),
            Arc::new(risk_level.finish()),
            Arc::new(percentile.finish()),
            Arc::new(rfm.finish()),
            Arc::new(stage.finish()),
            Arc::new(factors.finish()),
            Arc::new(clv.finish()),
            Arc::new(orders.finish()),
            Arc::new(alive.finish()),
            Arc::new(var.finish()),
            Arc::new(interests.finish()),
            Arc::new(channels.finish()),
            Arc::new(rooms.finish()),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.pending = 0;
        match &mut self.encoder {
            Some(e) => e.write(batch),
            None => Err(WriteCause::Io(io::Error::other(
                "the Parquet writer is closed",
            ))),
        }
    }

    /// Writes the last rows and the footer; the file, to be committed.
    fn finish(mut self) -> Result<AtomicFile, WriteCause> {
        let flushed = self.flush();
        let encoder = self
            .encoder
            .take()
            .ok_or_else(|| WriteCause::Io(io::Error::other("the Parquet writer is closed")))?;
        // The encoder's own error, when it stopped, says more than the failed hand-over.
        let file = encoder.finish()?;
        flushed?;
        Ok(file)
    }
}

impl Drop for ParquetSink {
    /// A sink dropped unfinished (an error upstream) waits for its encoder thread, so the
    /// temporary file is gone when the drop returns.
    fn drop(&mut self) {
        if let Some(Encoder::Thread { queue, thread }) = self.encoder.take() {
            drop(queue);
            let _ = thread.join();
        }
    }
}

/// CSV with a reused formatting buffer for the numbers.
struct CsvSink {
    wtr: csv::Writer<BufWriter<AtomicFile>>,
    churn: String,
    percentile: String,
    /// clv, expected orders, P(alive), value at risk.
    value: [String; 4],
}

impl CsvSink {
    fn new(file: AtomicFile) -> Result<Self, WriteCause> {
        let mut wtr =
            csv::WriterBuilder::new().from_writer(BufWriter::with_capacity(1 << 18, file));
        wtr.write_record(SCORE_COLUMNS)?;
        Ok(CsvSink {
            wtr,
            churn: String::new(),
            percentile: String::new(),
            value: Default::default(),
        })
    }

    fn write(&mut self, r: &ScoreRow<'_>) -> Result<(), WriteCause> {
        self.churn.clear();
        self.percentile.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.churn, "{:.6}", r.churn_probability);
        let _ = write!(self.percentile, "{:.2}", r.risk_percentile);
        let [clv, orders, alive, var] = &mut self.value;
        for s in [&mut *clv, &mut *orders, &mut *alive, &mut *var] {
            s.clear();
        }
        let _ = write!(clv, "{:.2}", r.clv);
        let _ = write!(orders, "{:.4}", r.expected_orders);
        let _ = write!(alive, "{:.4}", r.p_alive);
        let _ = write!(var, "{:.2}", r.value_at_risk);
        self.wtr.write_record([
            r.user_id,
            r.tier_id,
            r.tier_name,
            &self.churn,
            r.risk_level,
            &self.percentile,
            r.rfm_segment,
            r.lifecycle_stage,
            r.top_factors,
            clv,
            orders,
            alive,
            var,
            r.interests,
            r.channels,
            r.rooms,
        ])?;
        Ok(())
    }

    /// Flushes the buffers; the file, to be committed.
    fn finish(self) -> Result<AtomicFile, WriteCause> {
        let buffered = self
            .wtr
            .into_inner()
            .map_err(|e| WriteCause::Io(e.into_error()))?;
        buffered
            .into_inner()
            .map_err(|e| WriteCause::Io(e.into_error()))
    }
}

enum Sink {
    Csv(Box<CsvSink>),
    Parquet(Box<ParquetSink>),
}

/// Writes scored users to `path` (`.csv` or `.parquet`) through an [`AtomicFile`].
pub struct ScoreWriter {
    path: PathBuf,
    sink: Sink,
    rows: u64,
}

impl ScoreWriter {
    /// Creates the temporary file; the format follows `path`'s extension (`.csv` or `.parquet`).
    /// Parquet is encoded on a thread of its own while the caller writes the next rows.
    pub fn create(path: &Path) -> Result<Self, WriteError> {
        Self::create_with(path, true)
    }

    /// [`ScoreWriter::create`] with the Parquet encoding on the caller's thread (`threaded`
    /// false): the same file, byte for byte, using one thread.
    pub fn create_with(path: &Path, threaded: bool) -> Result<Self, WriteError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let parquet = match ext.as_str() {
            "csv" => false,
            "parquet" => true,
            _ => {
                return Err(WriteError::UnsupportedExtension {
                    path: path.to_path_buf(),
                    ext,
                })
            }
        };
        // On failure the file drops and removes its temporary.
        let file = AtomicFile::create(path)?;
        let sink = if parquet {
            ParquetSink::new(file, threaded).map(|s| Sink::Parquet(Box::new(s)))
        } else {
            CsvSink::new(file).map(|s| Sink::Csv(Box::new(s)))
        }
        .map_err(WriteError::write(path))?;
        Ok(ScoreWriter {
            path: path.to_path_buf(),
            sink,
            rows: 0,
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, row: &ScoreRow<'_>) -> Result<(), WriteError> {
        match &mut self.sink {
            Sink::Csv(s) => s.write(row),
            Sink::Parquet(s) => s.write(row),
        }
        .map_err(WriteError::write(&self.path))?;
        self.rows += 1;
        Ok(())
    }

    /// Flushes, closes and puts the file in place; the number of rows written.
    pub fn finish(self) -> Result<u64, WriteError> {
        let file = match self.sink {
            Sink::Csv(s) => s.finish(),
            Sink::Parquet(s) => s.finish(),
        }
        .map_err(WriteError::write(&self.path))?;
        file.commit()?;
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn row(i: usize, user: &str) -> ScoreRow<'_> {
        ScoreRow {
            user_id: user,
            tier_id: if i.is_multiple_of(2) {
                "core_fans"
            } else {
                "dormant"
            },
            tier_name: "Core fans, \"loyal\"",
            churn_probability: i as f64 / 1000.0 + 0.000_000_4,
            risk_level: "low",
            risk_percentile: 12.345,
            rfm_segment: "important_value",
            lifecycle_stage: "mature",
            top_factors: "recency_days=+0.120 (3.0000); orders=-0.050 (7.0000)",
            clv: 12.345,
            expected_orders: 0.5,
            p_alive: 0.75,
            value_at_risk: 1.2345,
            interests: "beauty; food",
            channels: "",
            rooms: if i.is_multiple_of(2) {
                ""
            } else {
                "room_0042; room_7"
            },
        }
    }

    #[test]
    fn csv_round_trips_through_the_csv_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.csv");
        let mut w = ScoreWriter::create(&path).unwrap();
        let users: Vec<String> = (0..3).map(|i| format!("u{i}")).collect();
        for (i, u) in users.iter().enumerate() {
            w.write(&row(i, u)).unwrap();
        }
        assert!(!path.exists(), "nothing under the final name before finish");
        assert_eq!(w.finish().unwrap(), 3);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary remains"
        );

        let mut rdr = csv::Reader::from_path(&path).unwrap();
        assert_eq!(
            rdr.headers().unwrap().iter().collect::<Vec<_>>(),
            SCORE_COLUMNS
        );
        let recs: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 3);
        assert_eq!(&recs[1][0], "u1");
        assert_eq!(&recs[1][1], "dormant");
        assert_eq!(&recs[1][2], "Core fans, \"loyal\"");
        assert_eq!(&recs[1][3], "0.001000");
        assert_eq!(&recs[1][5], "12.35");
        assert_eq!(
            &recs[2][8],
            "recency_days=+0.120 (3.0000); orders=-0.050 (7.0000)"
        );
        let value: Vec<&str> = recs[2].iter().skip(9).take(4).collect();
        assert_eq!(value, ["12.35", "0.5000", "0.7500", "1.23"]);
        assert_eq!((&recs[2][13], &recs[2][14]), ("beauty; food", ""));
        // The rooms last: empty for a user without rooms, else highest first.
        assert_eq!((&recs[0][15], &recs[1][15]), ("", "room_0042; room_7"));
    }

    #[test]
    fn parquet_has_every_row_and_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let n = PARQUET_BATCH_ROWS + 10;
        let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        let mut w = ScoreWriter::create(&path).unwrap();
        for (i, u) in users.iter().enumerate() {
            w.write(&row(i, u)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), n as u64);

        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), n as i64);
        let names: Vec<String> = reader
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, SCORE_COLUMNS);
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        let last = batches.last().unwrap();
        let k = last.num_rows() - 1;
        assert_eq!(
            last.column(0).as_string::<i32>().value(k),
            format!("u{}", n - 1)
        );
        let p = last.column(3).as_primitive::<Float64Type>().value(k);
        assert!((p - row(n - 1, "").churn_probability).abs() < 1e-12);
        let var = last.column(12).as_primitive::<Float64Type>().value(k);
        assert_eq!(var, 1.2345);
        let rooms = last.column(15).as_string::<i32>();
        assert_eq!(
            (rooms.value(k - 1), rooms.value(k)),
            ("", "room_0042; room_7")
        );
    }

    /// The encoder thread changes where the work runs, not the file: the same rows through a
    /// threaded and an inline writer give the same bytes (several batches and a partial one).
    #[test]
    fn a_parquet_file_encoded_on_its_own_thread_is_the_file_encoded_inline() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * PARQUET_BATCH_ROWS + 123;
        let users: Vec<String> = (0..n).map(|i| format!("user-{i:08}")).collect();
        let write = |name: &str, threaded: bool| {
            let path = dir.path().join(name);
            let mut w = ScoreWriter::create_with(&path, threaded).unwrap();
            for (i, u) in users.iter().enumerate() {
                w.write(&row(i, u)).unwrap();
            }
            assert_eq!(w.finish().unwrap(), n as u64);
            std::fs::read(&path).unwrap()
        };
        let (threaded, inline) = (write("t.parquet", true), write("i.parquet", false));
        assert!(threaded.len() > 100_000, "{} bytes", threaded.len());
        assert!(threaded == inline, "the two files differ");
    }

    #[test]
    fn unknown_extensions_are_refused_naming_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let err = ScoreWriter::create(&dir.path().join("scores.json"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("\"json\""), "{err}");
        assert!(matches!(err, WriteError::UnsupportedExtension { .. }));
    }

    #[test]
    fn a_writer_dropped_before_finish_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["scores.csv", "scores.parquet"] {
            let path = dir.path().join(name);
            let mut w = ScoreWriter::create(&path).unwrap();
            w.write(&row(0, "u0")).unwrap();
            drop(w);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{name}");
        }
    }
}
