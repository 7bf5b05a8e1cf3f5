//! Converts Whisper from CTranslate2's model directory (`model.bin` of binary version 6 with
//! f16, bf16 or f32 weights, plus `vocabulary.txt`) into the ggml f16 file that whisper.cpp
//! loads, and re-reads such a file to check its layout. Pure Rust: tensors are renamed and
//! split the way whisper.cpp names them, the Slaney mel filterbank is computed here, and the
//! vocabulary is decoded from GPT-2's byte-level strings. Facts: shared/notes/whisper-model.md.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// "ggml" as a little-endian u32: the first four bytes of every file written here.
const GGML_MAGIC: u32 = 0x6767_6d6c;
/// The only `model.bin` layout this importer reads.
const CT2_BINARY_VERSION: u32 = 6;
/// ggml file type 1 ("mostly f16"): 2-D weights in f16, everything else in f32.
const FTYPE_MOSTLY_F16: u32 = 1;
const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;
/// Bins of a 400-point real FFT: the second dimension of the mel filters.
pub const MEL_BINS: usize = N_FFT / 2 + 1;
/// More layers than any Whisper has (large: 32); a corrupt name or header asking for more is
/// rejected before a plan of that size is built.
const MAX_LAYERS: u64 = 256;
/// Bounds for the other hyperparameters when re-reading a file, for the same reason.
const MAX_HPARAM: u64 = 1 << 20;
/// Whisper has 80 mel bands (128 in large-v3); a corrupt conv1 shape asking for far more is
/// rejected before the filterbank is computed.
const MAX_MELS: u32 = 512;
/// Tensor names longer than this are corruption, not whisper.cpp names.
const MAX_NAME_LEN: i32 = 1024;

/// Why an import or a verification failed. `file` is the file at fault, `what` the part of it
/// (a tensor or variable name, a vocabulary line, a header field) and `why` what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Opening, reading, writing or renaming a file failed.
    #[error("{}: {what}: {source}", file.display())]
    Io {
        file: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    /// The input is damaged or inconsistent: truncated, sizes that disagree, a missing tensor.
    #[error("{}: {what}: {why}", file.display())]
    Malformed {
        file: PathBuf,
        what: String,
        why: String,
    },
    /// The input is well formed but of a kind this importer does not convert (another binary
    /// version, an unknown dtype, quantised weights, a spec other than Whisper's).
    #[error("{}: {what}: not supported: {why}", file.display())]
    Unsupported {
        file: PathBuf,
        what: String,
        why: String,
    },
}

fn malformed(file: &Path, what: impl Into<String>, why: impl Into<String>) -> ImportError {
    ImportError::Malformed {
        file: file.to_path_buf(),
        what: what.into(),
        why: why.into(),
    }
}

fn unsupported(file: &Path, what: impl Into<String>, why: impl Into<String>) -> ImportError {
    ImportError::Unsupported {
        file: file.to_path_buf(),
        what: what.into(),
        why: why.into(),
    }
}

fn io_error<'a>(file: &'a Path, what: &'a str) -> impl FnOnce(io::Error) -> ImportError + 'a {
    move |source| ImportError::Io {
        file: file.to_path_buf(),
        what: what.to_string(),
        source,
    }
}

/// What [`import`] is doing, for a progress display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Reading `model.bin`: reported at the start, about every 1 % and at the end.
    Reading { done_bytes: u64, total_bytes: u64 },
    /// About to write tensor `index` (counted from 0) of `count`.
    Writing {
        tensor: String,
        index: usize,
        count: usize,
    },
}

/// What [`import`] wrote: the hyperparameters of the ggml header and the file's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// Tensors written (167 for tiny.en).
    pub tensors: usize,
    /// Length of the finished file.
    pub bytes_written: u64,
    /// The header written.
    pub hparams: Hparams,
    /// Regular tokens written to the vocabulary (50256 for tiny.en); whisper.cpp adds the
    /// special and timestamp tokens itself.
    pub vocab_tokens: u32,
}

/// Element type of a ggml tensor (the file's `ftype` code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
}

impl GgmlType {
    fn code(self) -> i32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
        }
    }

    fn size(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
        }
    }
}

/// One tensor header of a ggml file, as [`verify`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgmlTensor {
    pub name: String,
    /// ggml order: the fastest-varying dimension first (PyTorch's shape reversed).
    pub ne: Vec<u32>,
    pub ty: GgmlType,
    /// Where the tensor's data starts in the file, and its length in bytes.
    pub data_offset: u64,
    pub data_len: u64,
}

/// What [`verify`] found in a ggml file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgmlSummary {
    pub file_len: u64,
    /// The header read.
    pub hparams: Hparams,
    /// Shape of the mel filterbank: (mels, FFT bins), (80, 201) for Whisper.
    pub mel_filters: (u32, u32),
    /// Tokens in the file's vocabulary.
    pub vocab_tokens: u32,
    pub tensors: usize,
    pub f16_tensors: usize,
    pub f32_tensors: usize,
    /// Every tensor header, in file order.
    pub tensor_headers: Vec<GgmlTensor>,
}

/// The eleven header fields of a ggml Whisper file, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: u32,
    pub n_audio_ctx: u32,
    pub n_audio_state: u32,
    pub n_audio_head: u32,
    pub n_audio_layer: u32,
    pub n_text_ctx: u32,
    pub n_text_state: u32,
    pub n_text_head: u32,
    pub n_text_layer: u32,
    pub n_mels: u32,
    pub ftype: u32,
}

const HPARAM_NAMES: [&str; 11] = [
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
    "n_mels",
    "ftype",
];

impl Hparams {
    fn to_array(self) -> [u32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }

    fn from_array(a: [u32; 11]) -> Self {
        Hparams {
            n_vocab: a[0],
            n_audio_ctx: a[1],
            n_audio_state: a[2],
            n_audio_head: a[3],
            n_audio_layer: a[4],
            n_text_ctx: a[5],
            n_text_state: a[6],
            n_text_head: a[7],
            n_text_layer: a[8],
            n_mels: a[9],
            ftype: a[10],
        }
    }
}

/// Converts the CTranslate2 Whisper model in `dir` (`model.bin`, `vocabulary.txt`; the JSON
/// files are not needed) into a ggml f16 file at `out`. Everything is read and checked before
/// `out` is touched; the file is written as `<out>.partial` and renamed when complete, so a
/// failed import leaves no half file behind. [`verify`] re-reads the result.
pub fn import(
    dir: &Path,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImportReport, ImportError> {
    let model_path = dir.join("model.bin");
    let bytes = read_with_progress(&model_path, progress)?;
    let prepared = prepare(&model_path, &bytes)?;
    let h = prepared.hparams;
    let vocab = read_vocab(&dir.join("vocabulary.txt"), h.n_vocab)?;
    let mel = mel_filters(h.n_mels as usize);

    let partial = partial_path(out);
    let written = write_ggml(&partial, &h, &mel, &vocab, &prepared, progress)
        .and_then(|()| fs::rename(&partial, out).map_err(io_error(out, "rename the finished file")))
        .and_then(|()| fs::metadata(out).map_err(io_error(out, "stat the finished file")));
    let bytes_written = match written {
        Ok(meta) => meta.len(),
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    Ok(ImportReport {
        tensors: prepared.tensors.len(),
        bytes_written,
        hparams: h,
        vocab_tokens: vocab.len() as u32,
    })
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = OsString::from(out.as_os_str());
    name.push(".partial");
    PathBuf::from(name)
}

/// Reads a whole file, reporting progress about every 1 % (at least every 64 KiB read).
fn read_with_progress(
    path: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<u8>, ImportError> {
    let mut file = File::open(path).map_err(io_error(path, "open"))?;
    let total = file.metadata().map_err(io_error(path, "stat"))?.len();
    let step = (total / 100).max(64 * 1024);
    let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    progress(Progress::Reading {
        done_bytes: 0,
        total_bytes: total,
    });
    loop {
        let n = (&mut file)
            .take(step)
            .read_to_end(&mut buf)
            .map_err(io_error(path, "read"))?;
        if n == 0 {
            break;
        }
        let done = buf.len() as u64;
        progress(Progress::Reading {
            done_bytes: done,
            total_bytes: total.max(done),
        });
    }
    Ok(buf)
}

/// A parsed, checked model: the header fields and the tensors to write, in order.
struct Prepared<'a> {
    hparams: Hparams,
    model: Ct2Model<'a>,
    tensors: Vec<Resolved>,
}

/// One ggml tensor to write: elements `elements.0..elements.1` of variable `var`.
struct Resolved {
    entry: PlanEntry,
    var: usize,
    elements: (usize, usize),
}

/// Parses `model.bin`, derives the hyperparameters and matches every ggml tensor of the plan
/// to its source, checking shapes and dtypes. Writes nothing.
fn prepare<'a>(file: &Path, bytes: &'a [u8]) -> Result<Prepared<'a>, ImportError> {
    let model = parse_model(file, bytes)?;
    let hparams = derive_hparams(file, &model)?;
    let tensors = resolve(file, &model, plan(&hparams))?;
    Ok(Prepared {
        hparams,
        model,
        tensors,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Dtype {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Dtype::F32,
            1 => Dtype::I8,
            2 => Dtype::I16,
            3 => Dtype::I32,
            4 => Dtype::F16,
            5 => Dtype::Bf16,
            _ => return None,
        })
    }

    fn size(self) -> u64 {
        match self {
            Dtype::I8 => 1,
            Dtype::I16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::Bf16)
    }

    /// One element as f32 (exact for every dtype but i32 beyond 2^24, which never occurs).
    fn element(self, e: &[u8]) -> f32 {
        match self {
            Dtype::F32 => f32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            Dtype::F16 => f16_to_f32(u16::from_le_bytes([e[0], e[1]])),
            Dtype::Bf16 => f32::from_bits(u32::from(u16::from_le_bytes([e[0], e[1]])) << 16),
            Dtype::I8 => f32::from(e[0] as i8),
            Dtype::I16 => f32::from(i16::from_le_bytes([e[0], e[1]])),
            Dtype::I32 => i32::from_le_bytes([e[0], e[1], e[2], e[3]]) as f32,
        }
    }
}

/// One entry of `model.bin`: `data` borrows the file's bytes.
struct Variable<'a> {
    name: String,
    dims: Vec<u64>,
    dtype: Dtype,
    data: &'a [u8],
}

struct Ct2Model<'a> {
    vars: Vec<Variable<'a>>,
    by_name: HashMap<String, usize>,
    aliases: HashMap<String, String>,
}

impl Ct2Model<'_> {
    /// Index of the variable `name`, following one alias.
    fn find(&self, name: &str) -> Option<usize> {
        self.by_name
            .get(name)
            .or_else(|| {
                self.aliases
                    .get(name)
                    .and_then(|target| self.by_name.get(target))
            })
            .copied()
    }
}

/// A bounds-checked little-endian reader over the bytes of `file`.
struct Bytes<'a, 'p> {
    buf: &'a [u8],
    pos: usize,
    file: &'p Path,
}

impl<'a> Bytes<'a, '_> {
    fn take(&mut self, n: usize, what: &str, part: &str) -> Result<&'a [u8], ImportError> {
        let Some(end) = self.pos.checked_add(n).filter(|&end| end <= self.buf.len()) else {
            return Err(malformed(
                self.file,
                what,
                format!(
                    "truncated in its {part}: {n} bytes needed at byte {}, the file has {}",
                    self.pos,
                    self.buf.len()
                ),
            ));
        };
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self, what: &str, part: &str) -> Result<u8, ImportError> {
        Ok(self.take(1, what, part)?[0])
    }

    fn u16(&mut self, what: &str, part: &str) -> Result<u16, ImportError> {
        let b = self.take(2, what, part)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str, part: &str) -> Result<u32, ImportError> {
        let b = self.take(4, what, part)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// u16 length including a trailing NUL, the UTF-8 bytes, the NUL.
    fn string(&mut self, what: &str, part: &str) -> Result<String, ImportError> {
        let len = usize::from(self.u16(what, part)?);
        let bytes = self.take(len, what, part)?;
        let Some((&0, text)) = bytes.split_last() else {
            return Err(malformed(
                self.file,
                what,
                format!("its {part} does not end in NUL"),
            ));
        };
        String::from_utf8(text.to_vec())
            .map_err(|_| malformed(self.file, what, format!("its {part} is not UTF-8")))
    }
}

fn parse_model<'a>(file: &Path, buf: &'a [u8]) -> Result<Ct2Model<'a>, ImportError> {
    let mut r = Bytes { buf, pos: 0, file };
    let version = r.u32("header", "binary version")?;
    if version != CT2_BINARY_VERSION {
        return Err(unsupported(
            file,
            "header",
            format!("binary version {version}; this importer reads version {CT2_BINARY_VERSION}"),
        ));
    }
    let spec = r.string("header", "spec name")?;
    if spec != "WhisperSpec" {
        return Err(unsupported(
            file,
            "header",
            format!("spec {spec:?} is not WhisperSpec"),
        ));
    }
    let _revision = r.u32("header", "spec revision")?;
    let n_vars = r.u32("header", "variable count")?;

    let mut vars = Vec::new();
    let mut by_name = HashMap::new();
    for i in 0..n_vars {
        let name = r.string(&format!("variable #{i}"), "name")?;
        let ndim = r.u8(&name, "rank")?;
        let mut dims = Vec::with_capacity(usize::from(ndim));
        for _ in 0..ndim {
            dims.push(u64::from(r.u32(&name, "dims")?));
        }
        let code = r.u8(&name, "dtype")?;
        let dtype = Dtype::from_code(code)
            .ok_or_else(|| unsupported(file, &name, format!("unknown dtype code {code}")))?;
        let nbytes = r.u32(&name, "byte count")?;
        let needed = dims
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        if needed != Some(u64::from(nbytes)) {
            return Err(malformed(
                file,
                &name,
                format!("{nbytes} bytes of data, but shape {dims:?} of {dtype:?} needs {needed:?}"),
            ));
        }
        let data = r.take(nbytes as usize, &name, "data")?;
        if by_name.insert(name.clone(), vars.len()).is_some() {
            return Err(malformed(file, &name, "appears twice"));
        }
        vars.push(Variable {
            name,
            dims,
            dtype,
            data,
        });
    }

    let n_aliases = r.u32("aliases", "count")?;
    let mut aliases = HashMap::new();
    for i in 0..n_aliases {
        let alias = r.string(&format!("alias #{i}"), "name")?;
        let target = r.string(&alias, "alias target")?;
        aliases.insert(alias, target);
    }
    if r.pos != buf.len() {
        return Err(malformed(
            file,
            "end of file",
            format!("{} unexpected bytes after the aliases", buf.len() - r.pos),
        ));
    }
    Ok(Ct2Model {
        vars,
        by_name,
        aliases,
    })
}

/// The shape of `name`, which must exist with `rank` dimensions.
fn dims_of<'m>(
    file: &Path,
    m: &'m Ct2Model<'_>,
    name: &str,
    rank: usize,
) -> Result<&'m [u64], ImportError> {
    let var = m
        .find(name)
        .map(|i| &m.vars[i])
        .ok_or_else(|| malformed(file, name, "missing"))?;
    if var.dims.len() != rank {
        return Err(malformed(
            file,
            name,
            format!("has shape {:?}, expected {rank} dimensions", var.dims),
        ));
    }
    Ok(&var.dims)
}

/// An integer scalar such as `encoder/num_heads`.
fn scalar_int(file: &Path, m: &Ct2Model<'_>, name: &str) -> Result<u64, ImportError> {
    let var = m
        .find(name)
        .map(|i| &m.vars[i])
        .ok_or_else(|| malformed(file, name, "missing"))?;
    if var.dtype.is_float() || var.dims.iter().product::<u64>() != 1 {
        return Err(malformed(
            file,
            name,
            format!(
                "expected one integer, found shape {:?} of {:?}",
                var.dims, var.dtype
            ),
        ));
    }
    let value = var.dtype.element(var.data);
    if value < 1.0 {
        return Err(malformed(
            file,
            name,
            format!("is {value}, expected a positive count"),
        ));
    }
    Ok(value as u64)
}

/// Layers of `prefix` ("encoder/" or "decoder/"): one more than the largest N in a name
/// `<prefix>layer_N/...` (`encoder/layer_norm/...` is not a layer).
fn count_layers(file: &Path, m: &Ct2Model<'_>, prefix: &str) -> Result<u64, ImportError> {
    let mut count = 0u64;
    for var in &m.vars {
        let Some(rest) = var
            .name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("layer_"))
        else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || !rest[digits..].starts_with('/') {
            continue;
        }
        match rest[..digits].parse::<u64>() {
            Ok(n) if n < MAX_LAYERS => count = count.max(n + 1),
            _ => {
                return Err(malformed(
                    file,
                    &var.name,
                    format!("layer index beyond the {MAX_LAYERS} this importer accepts"),
                ))
            }
        }
    }
    if count == 0 {
        return Err(malformed(
            file,
            format!("{prefix}layer_0"),
            "no layers found",
        ));
    }
    Ok(count)
}

/// A hyperparameter as the ggml header stores it: positive and within i32.
fn header_value(file: &Path, what: &str, value: u64) -> Result<u32, ImportError> {
    match u32::try_from(value) {
        Ok(v) if v > 0 && v <= i32::MAX as u32 => Ok(v),
        _ => Err(malformed(
            file,
            what,
            format!("{value} does not fit a ggml header field"),
        )),
    }
}

fn derive_hparams(file: &Path, m: &Ct2Model<'_>) -> Result<Hparams, ImportError> {
    const EMB: &str = "decoder/embeddings/weight";
    const EPE: &str = "encoder/position_encodings/encodings";
    const DPE: &str = "decoder/position_encodings/encodings";
    const CONV1: &str = "encoder/conv1/weight";
    let emb = dims_of(file, m, EMB, 2)?;
    let epe = dims_of(file, m, EPE, 2)?;
    let dpe = dims_of(file, m, DPE, 2)?;
    let conv1 = dims_of(file, m, CONV1, 3)?;
    let audio_heads = scalar_int(file, m, "encoder/num_heads")?;
    let text_heads = scalar_int(file, m, "decoder/num_heads")?;

    let h = Hparams {
        n_vocab: header_value(file, EMB, emb[0])?,
        n_audio_ctx: header_value(file, EPE, epe[0])?,
        n_audio_state: header_value(file, EPE, epe[1])?,
        n_audio_head: header_value(file, "encoder/num_heads", audio_heads)?,
        n_audio_layer: header_value(file, "encoder/layer_*", count_layers(file, m, "encoder/")?)?,
        n_text_ctx: header_value(file, DPE, dpe[0])?,
        n_text_state: header_value(file, EMB, emb[1])?,
        n_text_head: header_value(file, "decoder/num_heads", text_heads)?,
        n_text_layer: header_value(file, "decoder/layer_*", count_layers(file, m, "decoder/")?)?,
        n_mels: header_value(file, CONV1, conv1[1])?,
        ftype: FTYPE_MOSTLY_F16,
    };
    if h.n_mels > MAX_MELS {
        return Err(unsupported(
            file,
            CONV1,
            format!("{} mel bands (at most {MAX_MELS})", h.n_mels),
        ));
    }
    if dpe[1] != emb[1] {
        return Err(malformed(
            file,
            DPE,
            format!(
                "width {} differs from the token embeddings' {}",
                dpe[1], emb[1]
            ),
        ));
    }
    if h.n_audio_state != h.n_text_state {
        return Err(unsupported(
            file,
            EPE,
            format!(
                "audio width {} differs from text width {}; whisper.cpp assumes they are equal",
                h.n_audio_state, h.n_text_state
            ),
        ));
    }
    for (name, state, heads) in [
        ("encoder/num_heads", h.n_audio_state, h.n_audio_head),
        ("decoder/num_heads", h.n_text_state, h.n_text_head),
    ] {
        if state % heads != 0 {
            return Err(malformed(
                file,
                name,
                format!("{heads} heads do not divide width {state}"),
            ));
        }
    }
    Ok(h)
}

/// One ggml tensor: `dims` in PyTorch order (written reversed), taken from rows
/// `rows.0..rows.1` of the CTranslate2 variable `src`, whose shape must be `src_dims`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlanEntry {
    ggml: String,
    dims: Vec<u64>,
    ty: GgmlType,
    src: String,
    src_dims: Vec<u64>,
    rows: (u64, u64),
}

/// The type whisper.cpp gives a tensor: f32 for 1-D tensors, the conv biases and the
/// positional embeddings, f16 for the rest (all f32 in an ftype-0 file).
fn ggml_type(ftype: u32, name: &str, rank: usize) -> GgmlType {
    const F32_NAMES: [&str; 4] = [
        "encoder.conv1.bias",
        "encoder.conv2.bias",
        "encoder.positional_embedding",
        "decoder.positional_embedding",
    ];
    if ftype == 0 || rank == 1 || F32_NAMES.contains(&name) {
        GgmlType::F32
    } else {
        GgmlType::F16
    }
}

struct Planner {
    ftype: u32,
    entries: Vec<PlanEntry>,
}

impl Planner {
    fn push(
        &mut self,
        ggml: String,
        src: &str,
        src_dims: &[u64],
        rows: (u64, u64),
        dims: Vec<u64>,
    ) {
        let ty = ggml_type(self.ftype, &ggml, dims.len());
        self.entries.push(PlanEntry {
            ggml,
            dims,
            ty,
            src: src.to_string(),
            src_dims: src_dims.to_vec(),
            rows,
        });
    }

    fn whole(&mut self, ggml: String, src: &str, dims: &[u64]) {
        self.push(ggml, src, dims, (0, dims[0]), dims.to_vec());
    }

    fn rows(&mut self, ggml: String, src: &str, src_dims: &[u64], from: u64, to: u64) {
        let mut dims = src_dims.to_vec();
        dims[0] = to - from;
        self.push(ggml, src, src_dims, (from, to), dims);
    }

    /// `layer_norm/gamma` and `layer_norm/beta` become `.weight` and `.bias`.
    fn layer_norm(&mut self, ggml: &str, src: &str, d: u64) {
        self.whole(format!("{ggml}.weight"), &format!("{src}/gamma"), &[d]);
        self.whole(format!("{ggml}.bias"), &format!("{src}/beta"), &[d]);
    }

    /// `linear_0` [3d, d] holds query, key and value; the key has no bias in Whisper (the
    /// slice is zero, and a key bias would not change the softmax anyway), and whisper.cpp
    /// refuses a file that has one.
    fn self_attention(&mut self, ggml: &str, src: &str, d: u64) {
        let (w, b) = (
            format!("{src}/linear_0/weight"),
            format!("{src}/linear_0/bias"),
        );
        self.rows(format!("{ggml}.query.weight"), &w, &[3 * d, d], 0, d);
        self.rows(format!("{ggml}.query.bias"), &b, &[3 * d], 0, d);
        self.rows(format!("{ggml}.key.weight"), &w, &[3 * d, d], d, 2 * d);
        self.rows(
            format!("{ggml}.value.weight"),
            &w,
            &[3 * d, d],
            2 * d,
            3 * d,
        );
        self.rows(format!("{ggml}.value.bias"), &b, &[3 * d], 2 * d, 3 * d);
        self.whole(
            format!("{ggml}.out.weight"),
            &format!("{src}/linear_1/weight"),
            &[d, d],
        );
        self.whole(
            format!("{ggml}.out.bias"),
            &format!("{src}/linear_1/bias"),
            &[d],
        );
    }

    /// Cross-attention: `linear_0` is the query, `linear_1` [2d, d] key and value (the key
    /// without bias), `linear_2` the output.
    fn cross_attention(&mut self, ggml: &str, src: &str, d: u64) {
        let (kv_w, kv_b) = (
            format!("{src}/linear_1/weight"),
            format!("{src}/linear_1/bias"),
        );
        self.whole(
            format!("{ggml}.query.weight"),
            &format!("{src}/linear_0/weight"),
            &[d, d],
        );
        self.whole(
            format!("{ggml}.query.bias"),
            &format!("{src}/linear_0/bias"),
            &[d],
        );
        self.rows(format!("{ggml}.key.weight"), &kv_w, &[2 * d, d], 0, d);
        self.rows(format!("{ggml}.value.weight"), &kv_w, &[2 * d, d], d, 2 * d);
        self.rows(format!("{ggml}.value.bias"), &kv_b, &[2 * d], d, 2 * d);
        self.whole(
            format!("{ggml}.out.weight"),
            &format!("{src}/linear_2/weight"),
            &[d, d],
        );
        self.whole(
            format!("{ggml}.out.bias"),
            &format!("{src}/linear_2/bias"),
            &[d],
        );
    }

    fn mlp(&mut self, ggml: &str, src: &str, d: u64) {
        let m = 4 * d;
        self.whole(
            format!("{ggml}.mlp.0.weight"),
            &format!("{src}/linear_0/weight"),
            &[m, d],
        );
        self.whole(
            format!("{ggml}.mlp.0.bias"),
            &format!("{src}/linear_0/bias"),
            &[m],
        );
        self.whole(
            format!("{ggml}.mlp.2.weight"),
            &format!("{src}/linear_1/weight"),
            &[d, m],
        );
        self.whole(
            format!("{ggml}.mlp.2.bias"),
            &format!("{src}/linear_1/bias"),
            &[d],
        );
        self.layer_norm(&format!("{ggml}.mlp_ln"), &format!("{src}/layer_norm"), d);
    }
}

/// Every tensor whisper.cpp loads, in the order of OpenAI's checkpoint (the order of
/// whisper.cpp's own converter; the loader itself looks tensors up by name).
fn plan(h: &Hparams) -> Vec<PlanEntry> {
    let mut p = Planner {
        ftype: h.ftype,
        entries: Vec::new(),
    };
    let d = u64::from(h.n_audio_state);
    let n_mels = u64::from(h.n_mels);
    let audio_ctx = u64::from(h.n_audio_ctx);
    p.whole(
        "encoder.positional_embedding".into(),
        "encoder/position_encodings/encodings",
        &[audio_ctx, d],
    );
    for (i, k_in) in [(1, n_mels), (2, d)] {
        let src = format!("encoder/conv{i}");
        p.whole(
            format!("encoder.conv{i}.weight"),
            &format!("{src}/weight"),
            &[d, k_in, 3],
        );
        p.push(
            format!("encoder.conv{i}.bias"),
            &format!("{src}/bias"),
            &[d],
            (0, d),
            vec![d, 1],
        );
    }
    for i in 0..h.n_audio_layer {
        let (g, s) = (format!("encoder.blocks.{i}"), format!("encoder/layer_{i}"));
        p.self_attention(&format!("{g}.attn"), &format!("{s}/self_attention"), d);
        p.layer_norm(
            &format!("{g}.attn_ln"),
            &format!("{s}/self_attention/layer_norm"),
            d,
        );
        p.mlp(&g, &format!("{s}/ffn"), d);
    }
    p.layer_norm("encoder.ln_post", "encoder/layer_norm", d);

    let d = u64::from(h.n_text_state);
    let text_ctx = u64::from(h.n_text_ctx);
    p.whole(
        "decoder.positional_embedding".into(),
        "decoder/position_encodings/encodings",
        &[text_ctx, d],
    );
    p.whole(
        "decoder.token_embedding.weight".into(),
        "decoder/embeddings/weight",
        &[u64::from(h.n_vocab), d],
    );
    for i in 0..h.n_text_layer {
        let (g, s) = (format!("decoder.blocks.{i}"), format!("decoder/layer_{i}"));
        p.self_attention(&format!("{g}.attn"), &format!("{s}/self_attention"), d);
        p.layer_norm(
            &format!("{g}.attn_ln"),
            &format!("{s}/self_attention/layer_norm"),
            d,
        );
        p.cross_attention(&format!("{g}.cross_attn"), &format!("{s}/attention"), d);
        p.layer_norm(
            &format!("{g}.cross_attn_ln"),
            &format!("{s}/attention/layer_norm"),
            d,
        );
        p.mlp(&g, &format!("{s}/ffn"), d);
    }
    p.layer_norm("decoder.ln", "decoder/layer_norm", d);
    p.entries
}

/// Finds each plan entry's source, checks its shape and dtype, and checks that no float
/// tensor of the model is left over (that would be a model this importer misunderstands).
fn resolve(
    file: &Path,
    m: &Ct2Model<'_>,
    plan: Vec<PlanEntry>,
) -> Result<Vec<Resolved>, ImportError> {
    let mut used = HashSet::new();
    let mut out = Vec::with_capacity(plan.len());
    for entry in plan {
        let index = m
            .find(&entry.src)
            .ok_or_else(|| malformed(file, &entry.src, "missing"))?;
        let var = &m.vars[index];
        if var.dims != entry.src_dims {
            return Err(malformed(
                file,
                &entry.src,
                format!("has shape {:?}, expected {:?}", var.dims, entry.src_dims),
            ));
        }
        if !var.dtype.is_float() {
            return Err(unsupported(
                file,
                &entry.src,
                format!(
                    "{:?} weights (quantised models are not converted)",
                    var.dtype
                ),
            ));
        }
        let row = entry.src_dims[1..].iter().product::<u64>() as usize;
        let elements = (entry.rows.0 as usize * row, entry.rows.1 as usize * row);
        used.insert(index);
        out.push(Resolved {
            entry,
            var: index,
            elements,
        });
    }
    if let Some(extra) = m
        .vars
        .iter()
        .enumerate()
        .find(|(i, v)| !used.contains(i) && v.dtype.is_float() && !v.dims.is_empty())
    {
        return Err(malformed(
            file,
            &extra.1.name,
            "a tensor with no place in the ggml file (not a Whisper model as this importer knows it)",
        ));
    }
    Ok(out)
}

/// Bytes GPT-2's `bytes_to_unicode` keeps as themselves: printable Latin-1.
fn gpt2_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The inverse of GPT-2's `bytes_to_unicode`, indexed by code point: printable bytes stand
/// for themselves, the other 68 bytes in increasing order for U+0100 to U+0143.
fn gpt2_decoder() -> [Option<u8>; 324] {
    let mut table = [None; 324];
    let mut next = 256;
    for b in 0..=255u8 {
        if gpt2_printable(b) {
            table[usize::from(b)] = Some(b);
        } else {
            table[next] = Some(b);
            next += 1;
        }
    }
    table
}

fn is_special(token: &str) -> bool {
    token.len() >= 5 && token.starts_with("<|") && token.ends_with("|>")
}

/// The regular tokens of `vocabulary.txt` (one per line, up to the first special token
/// `<|...|>`), decoded to raw bytes.
fn read_vocab(path: &Path, n_vocab: u32) -> Result<Vec<Vec<u8>>, ImportError> {
    let raw = fs::read(path).map_err(io_error(path, "read"))?;
    let text = std::str::from_utf8(&raw).map_err(|e| {
        let line = raw[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        malformed(path, format!("line {line}"), "not UTF-8")
    })?;
    let decoder = gpt2_decoder();
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut tokens = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // A byte-level token never holds a raw CR (byte 13 is written as U+010D).
        let token = line.strip_suffix('\r').unwrap_or(line);
        if is_special(token) {
            break;
        }
        if token.is_empty() {
            return Err(malformed(path, format!("line {}", i + 1), "empty token"));
        }
        let bytes = token
            .chars()
            .map(|c| {
                decoder.get(c as usize).copied().flatten().ok_or_else(|| {
                    malformed(
                        path,
                        format!("line {}", i + 1),
                        format!("{c:?} (U+{:04X}) is not in GPT-2's byte alphabet", c as u32),
                    )
                })
            })
            .collect::<Result<Vec<u8>, _>>()?;
        tokens.push(bytes);
    }
    if tokens.is_empty() {
        return Err(malformed(path, "line 1", "no regular tokens"));
    }
    if tokens.len() > n_vocab as usize {
        return Err(malformed(
            path,
            format!("line {}", tokens.len()),
            format!(
                "{} regular tokens, but the embeddings have {n_vocab} rows",
                tokens.len()
            ),
        ));
    }
    Ok(tokens)
}

/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)` with its defaults (fmin 0, fmax
/// 8000, Slaney mel scale, Slaney area normalisation, float32), row-major `n_mels` x 201.
/// The steps and roundings follow librosa's: each triangle is stored as f32, then multiplied in
/// f64 by 2 / (f_hi - f_lo) and rounded to f32 again. scripts/mel-reference.py is the same
/// computation in Python.
fn mel_filters(n_mels: usize) -> Vec<f32> {
    // Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per 6.4x).
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f >= MIN_LOG_HZ {
            min_log_mel + (f / MIN_LOG_HZ).ln() / logstep
        } else {
            f / F_SP
        }
    };
    let mel_to_hz = |m: f64| {
        if m >= min_log_mel {
            MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp()
        } else {
            F_SP * m
        }
    };

    // numpy.fft.rfftfreq(400, 1 / 16000): k * 40 Hz.
    let bin_hz = 1.0 / (N_FFT as f64 * (1.0 / SAMPLE_RATE));
    // numpy.linspace over the mel range, n_mels + 2 points, the last one exactly the end.
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0));
    let step = (hi - lo) / (n_mels + 1) as f64;
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| {
            if i == n_mels + 1 {
                hi
            } else {
                i as f64 * step + lo
            }
        })
        .map(mel_to_hz)
        .collect();

    let mut weights = Vec::with_capacity(n_mels * MEL_BINS);
    for i in 0..n_mels {
        let (f_lo, f_mid, f_hi) = (edges[i], edges[i + 1], edges[i + 2]);
        let enorm = 2.0 / (f_hi - f_lo);
        for k in 0..MEL_BINS {
            let f = k as f64 * bin_hz;
            let rising = -(f_lo - f) / (f_mid - f_lo);
            let falling = (f_hi - f) / (f_hi - f_mid);
            let triangle = 0.0f64.max(rising.min(falling)) as f32;
            weights.push((f64::from(triangle) * enorm) as f32);
        }
    }
    weights
}

/// IEEE binary16 to binary32; exact for every value, NaN payloads kept.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        0 => {
            // Zero or subnormal: man * 2^-24, exact in f32.
            let magnitude = man as f32 * f32::from_bits(0x3380_0000);
            f32::from_bits(sign | magnitude.to_bits())
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// binary32 to binary16, rounding to nearest, ties to even; overflow gives infinity, NaN
/// stays a (quiet) NaN.
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign
            | 0x7c00
            | if man == 0 {
                0
            } else {
                0x200 | (man >> 13) as u16
            };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // An f16 subnormal (or zero): (1.man) * 2^(exp - 127) / 2^-24 = m >> (14 - e).
        if e < -10 {
            return sign; // below half the smallest subnormal (f32 subnormals land here too)
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let (q, rem, half) = (m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1));
        let rounded = if rem > half || (rem == half && q & 1 == 1) {
            q + 1
        } else {
            q
        };
        return sign | rounded as u16;
    }
    let (q, rem) = (((e as u32) << 10) | (man >> 13), man & 0x1fff);
    // A carry out of the mantissa steps the exponent, up to infinity: both are right.
    let rounded = if rem > 0x1000 || (rem == 0x1000 && q & 1 == 1) {
        q + 1
    } else {
        q
    };
    sign | rounded as u16
}

fn write_ggml(
    path: &Path,
    h: &Hparams,
    mel: &[f32],
    vocab: &[Vec<u8>],
    prepared: &Prepared<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ImportError> {
    let file = File::create(path).map_err(io_error(path, "create"))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write_contents(&mut w, h, mel, vocab, prepared, progress).map_err(io_error(path, "write"))?;
    let file = w
        .into_inner()
        .map_err(|e| io_error(path, "write")(e.into_error()))?;
    file.sync_all().map_err(io_error(path, "sync"))
}

fn write_contents(
    w: &mut impl Write,
    h: &Hparams,
    mel: &[f32],
    vocab: &[Vec<u8>],
    prepared: &Prepared<'_>,
    progress: &mut dyn FnMut(Progress),
) -> io::Result<()> {
    // Every count written below was checked to fit an i32 (header_value, the vocabulary
    // bound by n_vocab, tensor dims bound by u32 byte counts of at least 2 bytes each).
    let i32_le = |v: usize| (v as i32).to_le_bytes();
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for v in h.to_array() {
        w.write_all(&i32_le(v as usize))?;
    }
    w.write_all(&i32_le(h.n_mels as usize))?;
    w.write_all(&i32_le(MEL_BINS))?;
    for v in mel {
        w.write_all(&v.to_le_bytes())?;
    }
    w.write_all(&i32_le(vocab.len()))?;
    for token in vocab {
        w.write_all(&i32_le(token.len()))?;
        w.write_all(token)?;
    }

    let count = prepared.tensors.len();
    let mut buf = Vec::with_capacity(1 << 16);
    for (index, t) in prepared.tensors.iter().enumerate() {
        let e = &t.entry;
        progress(Progress::Writing {
            tensor: e.ggml.clone(),
            index,
            count,
        });
        w.write_all(&i32_le(e.dims.len()))?;
        w.write_all(&i32_le(e.ggml.len()))?;
        w.write_all(&e.ty.code().to_le_bytes())?;
        for &d in e.dims.iter().rev() {
            w.write_all(&i32_le(d as usize))?;
        }
        w.write_all(e.ggml.as_bytes())?;

        let var = &prepared.model.vars[t.var];
        let size = var.dtype.size() as usize;
        let data = &var.data[t.elements.0 * size..t.elements.1 * size];
        match (var.dtype, e.ty) {
            (Dtype::F16, GgmlType::F16) | (Dtype::F32, GgmlType::F32) => w.write_all(data)?,
            (dtype, ty) => {
                for chunk in data.chunks(size * 8192) {
                    buf.clear();
                    for element in chunk.chunks_exact(size) {
                        let x = dtype.element(element);
                        match ty {
                            GgmlType::F32 => buf.extend_from_slice(&x.to_le_bytes()),
                            GgmlType::F16 => buf.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
                        }
                    }
                    w.write_all(&buf)?;
                }
            }
        }
    }
    w.flush()
}

/// A bounds-checked reader over a file whose length is known.
struct FileCursor<'p> {
    r: BufReader<File>,
    pos: u64,
    len: u64,
    file: &'p Path,
}

impl FileCursor<'_> {
    fn need(&self, n: u64, what: &str, part: &str) -> Result<(), ImportError> {
        if self.len - self.pos < n {
            return Err(malformed(
                self.file,
                what,
                format!(
                    "truncated in its {part}: {n} bytes needed at byte {}, the file has {}",
                    self.pos, self.len
                ),
            ));
        }
        Ok(())
    }

    fn bytes(&mut self, n: usize, what: &str, part: &str) -> Result<Vec<u8>, ImportError> {
        self.need(n as u64, what, part)?;
        let mut buf = vec![0; n];
        self.r
            .read_exact(&mut buf)
            .map_err(io_error(self.file, "read"))?;
        self.pos += n as u64;
        Ok(buf)
    }

    fn i32(&mut self, what: &str, part: &str) -> Result<i32, ImportError> {
        let b = self.bytes(4, what, part)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn skip(&mut self, n: u64, what: &str, part: &str) -> Result<(), ImportError> {
        self.need(n, what, part)?;
        // n <= len - pos, and a file length fits an i64.
        self.r
            .seek_relative(n as i64)
            .map_err(io_error(self.file, "seek"))?;
        self.pos += n;
        Ok(())
    }
}

/// Re-reads a ggml Whisper file: the magic, the hyperparameters, the mel filterbank (shape
/// n_mels x 201, finite non-negative values), the vocabulary (count and lengths), and every
/// tensor header against the set whisper.cpp loads for those hyperparameters (name, shape,
/// type, none missing, none extra, none twice), with the data sizes adding up to the file
/// length exactly. Tensor data is skipped, not read.
pub fn verify(ggml: &Path) -> Result<GgmlSummary, ImportError> {
    let file = File::open(ggml).map_err(io_error(ggml, "open"))?;
    let len = file.metadata().map_err(io_error(ggml, "stat"))?.len();
    let mut c = FileCursor {
        r: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        len,
        file: ggml,
    };

    let magic = c.i32("header", "magic")? as u32;
    if magic != GGML_MAGIC {
        return Err(malformed(
            ggml,
            "header",
            format!("magic {magic:#010x}, expected {GGML_MAGIC:#010x}: not a ggml file"),
        ));
    }
    let mut fields = [0u32; 11];
    for (field, name) in fields.iter_mut().zip(HPARAM_NAMES) {
        let v = c.i32("header", name)?;
        let ok = if name == "ftype" {
            v >= 0
        } else {
            v > 0 && v as u64 <= MAX_HPARAM
        };
        let ok = ok && !(name.ends_with("_layer") && v as u64 > MAX_LAYERS);
        if !ok {
            return Err(malformed(
                ggml,
                name,
                format!("{v} is not a plausible value"),
            ));
        }
        *field = v as u32;
    }
    let h = Hparams::from_array(fields);
    if h.n_mels > MAX_MELS {
        return Err(malformed(
            ggml,
            "n_mels",
            format!("{} is not a plausible value", h.n_mels),
        ));
    }
    if h.ftype > 1 {
        return Err(unsupported(
            ggml,
            "ftype",
            format!("{} (only 0, f32, and 1, f16)", h.ftype),
        ));
    }

    let n_mel = c.i32("mel filters", "mel count")?;
    let n_fft = c.i32("mel filters", "bin count")?;
    if n_mel as i64 != i64::from(h.n_mels) || n_fft as usize != MEL_BINS {
        return Err(malformed(
            ggml,
            "mel filters",
            format!(
                "shape {n_mel} x {n_fft}, expected {} x {MEL_BINS}",
                h.n_mels
            ),
        ));
    }
    let values = c.bytes(h.n_mels as usize * MEL_BINS * 4, "mel filters", "values")?;
    if let Some(bad) = values
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .find(|v| !v.is_finite() || *v < 0.0)
    {
        return Err(malformed(ggml, "mel filters", format!("holds {bad}")));
    }

    let vocab = c.i32("vocabulary", "token count")?;
    if vocab <= 0 || vocab as u32 > h.n_vocab {
        return Err(malformed(
            ggml,
            "vocabulary",
            format!("{vocab} tokens, expected 1 to n_vocab = {}", h.n_vocab),
        ));
    }
    for i in 0..vocab {
        let what = format!("vocabulary token {i}");
        let n = c.i32(&what, "length")?;
        if n < 0 {
            return Err(malformed(ggml, what, format!("length {n}")));
        }
        c.skip(n as u64, &what, "bytes")?;
    }

    let expected: HashMap<String, (Vec<u32>, GgmlType)> = plan(&h)
        .into_iter()
        .map(|e| {
            (
                e.ggml,
                (e.dims.iter().rev().map(|&d| d as u32).collect(), e.ty),
            )
        })
        .collect();
    let mut seen = HashSet::new();
    let mut headers = Vec::new();
    while c.pos < c.len {
        let slot = format!("tensor #{}", headers.len());
        let n_dims = c.i32(&slot, "rank")?;
        let name_len = c.i32(&slot, "name length")?;
        let ttype = c.i32(&slot, "type")?;
        if !(1..=4).contains(&n_dims) || !(1..=MAX_NAME_LEN).contains(&name_len) {
            return Err(malformed(
                ggml,
                slot,
                format!("rank {n_dims}, name length {name_len}: not a tensor header"),
            ));
        }
        let ty = match ttype {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            other => return Err(unsupported(ggml, slot, format!("tensor type {other}"))),
        };
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.i32(&slot, "dims")?;
            if d <= 0 {
                return Err(malformed(ggml, slot, format!("dimension {d}")));
            }
            ne.push(d as u32);
        }
        let name = String::from_utf8(c.bytes(name_len as usize, &slot, "name")?)
            .map_err(|_| malformed(ggml, &slot, "name is not UTF-8"))?;
        let data_len = ne
            .iter()
            .try_fold(ty.size(), |acc, &d| acc.checked_mul(u64::from(d)));
        let Some(data_len) = data_len else {
            return Err(malformed(ggml, name, format!("dims {ne:?} overflow")));
        };
        let data_offset = c.pos;
        c.skip(data_len, &name, "data")?;

        match expected.get(&name) {
            None => {
                return Err(malformed(
                    ggml,
                    name,
                    "not a tensor whisper.cpp loads for this model",
                ))
            }
            Some((want_ne, want_ty)) if *want_ne != ne || *want_ty != ty => {
                return Err(malformed(
                    ggml,
                    name,
                    format!("{ty:?} {ne:?}, expected {want_ty:?} {want_ne:?}"),
                ));
            }
            Some(_) => {}
        }
        if !seen.insert(name.clone()) {
            return Err(malformed(ggml, name, "appears twice"));
        }
        headers.push(GgmlTensor {
            name,
            ne,
            ty,
            data_offset,
            data_len,
        });
    }
    if let Some(missing) = plan(&h).into_iter().find(|e| !seen.contains(&e.ggml)) {
        return Err(malformed(ggml, missing.ggml, "missing"));
    }

    let f16_tensors = headers.iter().filter(|t| t.ty == GgmlType::F16).count();
    Ok(GgmlSummary {
        file_len: len,
        hparams: h,
        mel_filters: (h.n_mels, MEL_BINS as u32),
        vocab_tokens: vocab as u32,
        tensors: headers.len(),
        f16_tensors,
        f32_tensors: headers.len() - f16_tensors,
        tensor_headers: headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- A synthetic CTranslate2 Whisper model, named like the real one -----------------------

    /// One `model.bin` entry: name, shape, dtype code, raw bytes.
    type RawVar = (String, Vec<u32>, u8, Vec<u8>);

    struct Ct2File {
        version: u32,
        spec: String,
        vars: Vec<RawVar>,
        aliases: Vec<(String, String)>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    impl Ct2File {
        fn bytes(&self) -> Vec<u8> {
            self.layout().0
        }

        /// The file and where each variable's data lies in it.
        fn layout(&self) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
            let mut ranges = Vec::new();
            let mut out = Vec::new();
            out.extend_from_slice(&self.version.to_le_bytes());
            put_str(&mut out, &self.spec);
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&(self.vars.len() as u32).to_le_bytes());
            for (name, dims, dtype, data) in &self.vars {
                put_str(&mut out, name);
                out.push(dims.len() as u8);
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.push(*dtype);
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                ranges.push(out.len()..out.len() + data.len());
                out.extend_from_slice(data);
            }
            out.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
            for (alias, target) in &self.aliases {
                put_str(&mut out, alias);
                put_str(&mut out, target);
            }
            (out, ranges)
        }

        fn var(&self, name: &str) -> &RawVar {
            self.vars.iter().find(|v| v.0 == name).unwrap()
        }

        fn var_mut(&mut self, name: &str) -> &mut RawVar {
            self.vars.iter_mut().find(|v| v.0 == name).unwrap()
        }

        fn remove(&mut self, name: &str) {
            self.vars.retain(|v| v.0 != name);
        }

        /// The f16 bit patterns of an f16 variable.
        fn f16_bits(&self, name: &str) -> Vec<u16> {
            let (_, _, dtype, data) = self.var(name);
            assert_eq!(*dtype, 4);
            data.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        }
    }

    /// Deterministic finite f16 bit patterns of both signs, subnormals and zeros included
    /// (the mask keeps the exponent below 31).
    fn value_bits(tensor: u32, element: u32) -> u16 {
        let x = (tensor.wrapping_mul(0x9E37_79B9) ^ element.wrapping_mul(0x85EB_CA6B))
            .rotate_left(13)
            .wrapping_mul(0xC2B2_AE35);
        ((x >> 16) as u16) & 0xBBFF
    }

    const D: u32 = 8;
    const HEADS: u16 = 2;
    const N_VOCAB: u32 = 7;
    const AUDIO_CTX: u32 = 6;
    const TEXT_CTX: u32 = 5;
    const MELS: u32 = 80;

    /// d = 8, 2 heads, one encoder and one decoder layer, 7 vocabulary rows; every float
    /// tensor f16 with distinct values.
    fn synthetic() -> Ct2File {
        let mut vars: Vec<RawVar> = Vec::new();
        let mut float = |name: String, dims: Vec<u32>| {
            let t = vars.len() as u32;
            let n: u32 = dims.iter().product();
            let data = (0..n)
                .flat_map(|e| value_bits(t, e).to_le_bytes())
                .collect();
            vars.push((name, dims, 4, data));
        };
        let d = D;
        float("decoder/embeddings/weight".into(), vec![N_VOCAB, d]);
        for (p, cross) in [("encoder/layer_0", false), ("decoder/layer_0", true)] {
            let ln = |float: &mut dyn FnMut(String, Vec<u32>), s: &str| {
                float(format!("{p}/{s}/layer_norm/beta"), vec![d]);
                float(format!("{p}/{s}/layer_norm/gamma"), vec![d]);
            };
            if cross {
                ln(&mut float, "attention");
                float(format!("{p}/attention/linear_0/bias"), vec![d]);
                float(format!("{p}/attention/linear_0/weight"), vec![d, d]);
                float(format!("{p}/attention/linear_1/bias"), vec![2 * d]);
                float(format!("{p}/attention/linear_1/weight"), vec![2 * d, d]);
                float(format!("{p}/attention/linear_2/bias"), vec![d]);
                float(format!("{p}/attention/linear_2/weight"), vec![d, d]);
            }
            ln(&mut float, "ffn");
            float(format!("{p}/ffn/linear_0/bias"), vec![4 * d]);
            float(format!("{p}/ffn/linear_0/weight"), vec![4 * d, d]);
            float(format!("{p}/ffn/linear_1/bias"), vec![d]);
            float(format!("{p}/ffn/linear_1/weight"), vec![d, 4 * d]);
            ln(&mut float, "self_attention");
            float(format!("{p}/self_attention/linear_0/bias"), vec![3 * d]);
            float(
                format!("{p}/self_attention/linear_0/weight"),
                vec![3 * d, d],
            );
            float(format!("{p}/self_attention/linear_1/bias"), vec![d]);
            float(format!("{p}/self_attention/linear_1/weight"), vec![d, d]);
        }
        for s in ["decoder", "encoder"] {
            float(format!("{s}/layer_norm/beta"), vec![d]);
            float(format!("{s}/layer_norm/gamma"), vec![d]);
        }
        float(
            "decoder/position_encodings/encodings".into(),
            vec![TEXT_CTX, d],
        );
        float("encoder/conv1/bias".into(), vec![d]);
        float("encoder/conv1/weight".into(), vec![d, MELS, 3]);
        float("encoder/conv2/bias".into(), vec![d]);
        float("encoder/conv2/weight".into(), vec![d, d, 3]);
        float(
            "encoder/position_encodings/encodings".into(),
            vec![AUDIO_CTX, d],
        );
        for (name, code, bytes) in [
            ("decoder/activation", 1u8, vec![3u8]),
            ("decoder/alibi", 1, vec![0]),
            ("decoder/alignment_heads", 2, vec![1, 0]),
            ("decoder/alignment_layer", 2, vec![0xff, 0xff]),
            ("decoder/num_heads", 2, HEADS.to_le_bytes().to_vec()),
            ("decoder/pre_norm", 1, vec![1]),
            ("decoder/scale_embeddings", 1, vec![0]),
            ("decoder/start_from_zero_embedding", 1, vec![0]),
            ("encoder/num_heads", 2, HEADS.to_le_bytes().to_vec()),
        ] {
            vars.push((name.to_string(), vec![], code, bytes));
        }
        Ct2File {
            version: 6,
            spec: "WhisperSpec".into(),
            vars,
            aliases: vec![(
                "decoder/projection/weight".into(),
                "decoder/embeddings/weight".into(),
            )],
        }
    }

    /// Regular tokens (the GPT-2 byte-level spellings of "!", " the", "\n", "é", byte 0xAD and
    /// "<|" which is not special) and then the special tokens.
    const VOCAB: &str =
        "!\n\u{120}the\n\u{10A}\nÃ©\n\u{143}\n<|\n<|endoftext|>\n<|startoftranscript|>\n";
    const VOCAB_BYTES: [&[u8]; 6] = [b"!", b" the", b"\n", &[0xC3, 0xA9], &[0xAD], b"<|"];

    fn write_model(dir: &Path, model: &Ct2File, vocab: &str) {
        fs::write(dir.join("model.bin"), model.bytes()).unwrap();
        fs::write(dir.join("vocabulary.txt"), vocab).unwrap();
        fs::write(dir.join("config.json"), "{}").unwrap();
        fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    }

    fn import_quiet(dir: &Path, out: &Path) -> Result<ImportReport, ImportError> {
        import(dir, out, &mut |_| {})
    }

    /// Imports `model`, returning the error text.
    fn import_error(model: &Ct2File, vocab: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), model, vocab);
        let out = dir.path().join("out.bin");
        let err = import_quiet(dir.path(), &out).expect_err("import should fail");
        assert!(
            !out.exists() && !partial_path(&out).exists(),
            "a failed import left a file"
        );
        err.to_string()
    }

    fn tensor<'s>(summary: &'s GgmlSummary, name: &str) -> &'s GgmlTensor {
        summary
            .tensor_headers
            .iter()
            .find(|t| t.name == name)
            .unwrap()
    }

    fn data<'f>(file: &'f [u8], t: &GgmlTensor) -> &'f [u8] {
        &file[t.data_offset as usize..(t.data_offset + t.data_len) as usize]
    }

    fn as_u16(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    fn as_f32_bits(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The names whisper.cpp loads for one encoder and one decoder layer, written out by hand
    /// rather than derived from `plan`, in the order of OpenAI's checkpoint.
    const EXPECTED_NAMES: [&str; 50] = [
        "encoder.positional_embedding",
        "encoder.conv1.weight",
        "encoder.conv1.bias",
        "encoder.conv2.weight",
        "encoder.conv2.bias",
        "encoder.blocks.0.attn.query.weight",
        "encoder.blocks.0.attn.query.bias",
        "encoder.blocks.0.attn.key.weight",
        "encoder.blocks.0.attn.value.weight",
        "encoder.blocks.0.attn.value.bias",
        "encoder.blocks.0.attn.out.weight",
        "encoder.blocks.0.attn.out.bias",
        "encoder.blocks.0.attn_ln.weight",
        "encoder.blocks.0.attn_ln.bias",
        "encoder.blocks.0.mlp.0.weight",
        "encoder.blocks.0.mlp.0.bias",
        "encoder.blocks.0.mlp.2.weight",
        "encoder.blocks.0.mlp.2.bias",
        "encoder.blocks.0.mlp_ln.weight",
        "encoder.blocks.0.mlp_ln.bias",
        "encoder.ln_post.weight",
        "encoder.ln_post.bias",
        "decoder.positional_embedding",
        "decoder.token_embedding.weight",
        "decoder.blocks.0.attn.query.weight",
        "decoder.blocks.0.attn.query.bias",
        "decoder.blocks.0.attn.key.weight",
        "decoder.blocks.0.attn.value.weight",
        "decoder.blocks.0.attn.value.bias",
        "decoder.blocks.0.attn.out.weight",
        "decoder.blocks.0.attn.out.bias",
        "decoder.blocks.0.attn_ln.weight",
        "decoder.blocks.0.attn_ln.bias",
        "decoder.blocks.0.cross_attn.query.weight",
        "decoder.blocks.0.cross_attn.query.bias",
        "decoder.blocks.0.cross_attn.key.weight",
        "decoder.blocks.0.cross_attn.value.weight",
        "decoder.blocks.0.cross_attn.value.bias",
        "decoder.blocks.0.cross_attn.out.weight",
        "decoder.blocks.0.cross_attn.out.bias",
        "decoder.blocks.0.cross_attn_ln.weight",
        "decoder.blocks.0.cross_attn_ln.bias",
        "decoder.blocks.0.mlp.0.weight",
        "decoder.blocks.0.mlp.0.bias",
        "decoder.blocks.0.mlp.2.weight",
        "decoder.blocks.0.mlp.2.bias",
        "decoder.blocks.0.mlp_ln.weight",
        "decoder.blocks.0.mlp_ln.bias",
        "decoder.ln.weight",
        "decoder.ln.bias",
    ];

    // --- Import and verify ---------------------------------------------------------------------

    #[test]
    fn synthetic_model_imports_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let model = synthetic();
        write_model(dir.path(), &model, VOCAB);
        let out = dir.path().join("ggml-synthetic.bin");
        let mut events = Vec::new();
        let report = import(dir.path(), &out, &mut |p| events.push(p)).unwrap();

        assert_eq!(report.tensors, 50);
        assert_eq!(report.bytes_written, fs::metadata(&out).unwrap().len());
        assert_eq!(
            (
                report.hparams.n_vocab,
                report.hparams.n_audio_ctx,
                report.hparams.n_audio_state,
                report.hparams.n_audio_head
            ),
            (N_VOCAB, AUDIO_CTX, D, u32::from(HEADS))
        );
        assert_eq!(
            (report.hparams.n_audio_layer, report.hparams.n_text_layer),
            (1, 1)
        );
        assert_eq!(
            (
                report.hparams.n_text_ctx,
                report.hparams.n_text_state,
                report.hparams.n_text_head
            ),
            (TEXT_CTX, D, u32::from(HEADS))
        );
        assert_eq!((report.hparams.n_mels, report.vocab_tokens), (MELS, 6));

        // Progress: reading from 0 to the whole file, then one event per tensor in order.
        let model_len = model.bytes().len() as u64;
        assert_eq!(
            events[0],
            Progress::Reading {
                done_bytes: 0,
                total_bytes: model_len
            }
        );
        let reading = events
            .iter()
            .filter(|e| matches!(e, Progress::Reading { .. }))
            .count();
        assert_eq!(
            events[reading - 1],
            Progress::Reading {
                done_bytes: model_len,
                total_bytes: model_len
            }
        );
        let writing: Vec<_> = events[reading..].to_vec();
        assert_eq!(writing.len(), 50);
        for (i, (event, name)) in writing.iter().zip(EXPECTED_NAMES).enumerate() {
            assert_eq!(
                *event,
                Progress::Writing {
                    tensor: name.into(),
                    index: i,
                    count: 50
                }
            );
        }

        let summary = verify(&out).unwrap();
        assert_eq!(summary.file_len, report.bytes_written);
        assert_eq!(summary.tensors, 50);
        assert_eq!(
            (
                summary.hparams.n_vocab,
                summary.hparams.n_audio_layer,
                summary.hparams.ftype
            ),
            (N_VOCAB, 1, 1)
        );
        assert_eq!(summary.mel_filters, (80, 201));
        assert_eq!(summary.vocab_tokens, 6);
        let names: Vec<&str> = summary
            .tensor_headers
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, EXPECTED_NAMES);
        // 1-D tensors, conv biases and positional embeddings are f32, the rest f16: per
        // encoder layer 6 weights, per decoder layer 10, plus the convs and the embedding.
        assert_eq!((summary.f16_tensors, summary.f32_tensors), (19, 31));
        for t in &summary.tensor_headers {
            let f32_wanted = t.ne.len() == 1
                || t.name.contains("positional")
                || t.name.contains("conv") && t.name.ends_with("bias");
            assert_eq!(t.ty == GgmlType::F32, f32_wanted, "{}", t.name);
            assert!(!t.name.ends_with("key.bias"), "{}", t.name);
        }

        // Shapes in ggml order.
        let d = D;
        for (name, ne) in [
            ("encoder.positional_embedding", vec![d, AUDIO_CTX]),
            ("encoder.conv1.weight", vec![3, MELS, d]),
            ("encoder.conv1.bias", vec![1, d]),
            ("encoder.conv2.weight", vec![3, d, d]),
            ("encoder.conv2.bias", vec![1, d]),
            ("encoder.blocks.0.attn.query.weight", vec![d, d]),
            ("encoder.blocks.0.attn.key.weight", vec![d, d]),
            ("encoder.blocks.0.attn.value.bias", vec![d]),
            ("encoder.blocks.0.mlp.0.weight", vec![d, 4 * d]),
            ("encoder.blocks.0.mlp.0.bias", vec![4 * d]),
            ("encoder.blocks.0.mlp.2.weight", vec![4 * d, d]),
            ("decoder.positional_embedding", vec![d, TEXT_CTX]),
            ("decoder.token_embedding.weight", vec![d, N_VOCAB]),
            ("decoder.blocks.0.cross_attn.key.weight", vec![d, d]),
            ("decoder.blocks.0.cross_attn.value.bias", vec![d]),
        ] {
            assert_eq!(tensor(&summary, name).ne, ne, "{name}");
        }
    }

    #[test]
    fn values_are_copied_bit_exactly_and_split_by_rows() {
        let dir = tempfile::tempdir().unwrap();
        let model = synthetic();
        write_model(dir.path(), &model, VOCAB);
        let out = dir.path().join("out.bin");
        import_quiet(dir.path(), &out).unwrap();
        let summary = verify(&out).unwrap();
        let file = fs::read(&out).unwrap();
        let f16 = |name: &str| as_u16(data(&file, tensor(&summary, name)));
        let f32 = |name: &str| as_f32_bits(data(&file, tensor(&summary, name)));
        let d = D as usize;

        // Self-attention: rows 0..d, d..2d, 2d..3d of linear_0 are query, key, value.
        for (g, s) in [
            ("encoder.blocks.0", "encoder/layer_0"),
            ("decoder.blocks.0", "decoder/layer_0"),
        ] {
            let w = model.f16_bits(&format!("{s}/self_attention/linear_0/weight"));
            let b = model.f16_bits(&format!("{s}/self_attention/linear_0/bias"));
            assert_eq!(f16(&format!("{g}.attn.query.weight")), w[..d * d]);
            assert_eq!(f16(&format!("{g}.attn.key.weight")), w[d * d..2 * d * d]);
            assert_eq!(f16(&format!("{g}.attn.value.weight")), w[2 * d * d..]);
            let widen = |bits: &[u16]| {
                bits.iter()
                    .map(|&h| f16_to_f32(h).to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(f32(&format!("{g}.attn.query.bias")), widen(&b[..d]));
            assert_eq!(f32(&format!("{g}.attn.value.bias")), widen(&b[2 * d..]));
            let out_w = model.f16_bits(&format!("{s}/self_attention/linear_1/weight"));
            assert_eq!(f16(&format!("{g}.attn.out.weight")), out_w);
            let gamma = model.f16_bits(&format!("{s}/ffn/layer_norm/gamma"));
            assert_eq!(f32(&format!("{g}.mlp_ln.weight")), widen(&gamma));
        }
        // Cross-attention: linear_1 rows 0..d key (no bias), d..2d value.
        let kv = model.f16_bits("decoder/layer_0/attention/linear_1/weight");
        let kv_b = model.f16_bits("decoder/layer_0/attention/linear_1/bias");
        assert_eq!(f16("decoder.blocks.0.cross_attn.key.weight"), kv[..d * d]);
        assert_eq!(f16("decoder.blocks.0.cross_attn.value.weight"), kv[d * d..]);
        let value_bias: Vec<u32> = kv_b[d..].iter().map(|&h| f16_to_f32(h).to_bits()).collect();
        assert_eq!(f32("decoder.blocks.0.cross_attn.value.bias"), value_bias);
        assert_eq!(
            f16("decoder.blocks.0.cross_attn.query.weight"),
            model.f16_bits("decoder/layer_0/attention/linear_0/weight")
        );
        assert_eq!(
            f16("decoder.blocks.0.cross_attn.out.weight"),
            model.f16_bits("decoder/layer_0/attention/linear_2/weight")
        );
        // Whole tensors, f16 copied and f32 widened.
        assert_eq!(
            f16("decoder.token_embedding.weight"),
            model.f16_bits("decoder/embeddings/weight")
        );
        assert_eq!(
            f16("encoder.conv1.weight"),
            model.f16_bits("encoder/conv1/weight")
        );
        let pe: Vec<u32> = model
            .f16_bits("encoder/position_encodings/encodings")
            .iter()
            .map(|&h| f16_to_f32(h).to_bits())
            .collect();
        assert_eq!(f32("encoder.positional_embedding"), pe);
        let conv_b: Vec<u32> = model
            .f16_bits("encoder/conv2/bias")
            .iter()
            .map(|&h| f16_to_f32(h).to_bits())
            .collect();
        assert_eq!(f32("encoder.conv2.bias"), conv_b);

        // Header, mel filters and vocabulary, byte by byte.
        let i32_at =
            |at: usize| i32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
        assert_eq!(&file[..4], b"lmgg");
        let header: Vec<i32> = (0..11).map(|i| i32_at(4 + 4 * i)).collect();
        assert_eq!(header, [7, 6, 8, 2, 1, 5, 8, 2, 1, 80, 1]);
        assert_eq!((i32_at(48), i32_at(52)), (80, 201));
        let mel = as_f32_bits(&file[56..56 + 80 * 201 * 4]);
        assert_eq!(
            mel,
            mel_filters(80)
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        );
        let mut at = 56 + 80 * 201 * 4;
        assert_eq!(i32_at(at), 6);
        at += 4;
        for want in VOCAB_BYTES {
            let len = i32_at(at) as usize;
            assert_eq!(&file[at + 4..at + 4 + len], want);
            at += 4 + len;
        }
        assert_eq!(
            at as u64,
            summary.tensor_headers[0].data_offset - (4 * 3 + 4 * 2 + 28)
        );
    }

    #[test]
    fn f32_and_bf16_sources_are_rounded_to_f16() {
        let mut model = synthetic();
        // Re-encode two tensors: one as f32 with values that need rounding, one as bf16.
        let name = "encoder/layer_0/ffn/linear_0/weight";
        let bits = model.f16_bits(name);
        let wide: Vec<f32> = bits
            .iter()
            .map(|&h| f16_to_f32(h) * (1.0 + f32::EPSILON * 1000.0))
            .collect();
        let var = model.var_mut(name);
        var.2 = 0;
        var.3 = wide.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf = "decoder/layer_0/ffn/linear_1/weight";
        let bf_values: Vec<u16> = (0..model.var(bf).1.iter().product::<u32>())
            .map(|i| 0x3F80 + (i as u16 % 200))
            .collect();
        let var = model.var_mut(bf);
        var.2 = 5;
        var.3 = bf_values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // And a 1-D f32 tensor, copied as is.
        let ln = "decoder/layer_norm/gamma";
        let ln_values: Vec<f32> = (0..D).map(|i| 0.1 * i as f32 + 1.0e-7).collect();
        let var = model.var_mut(ln);
        var.2 = 0;
        var.3 = ln_values.iter().flat_map(|v| v.to_le_bytes()).collect();

        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), &model, VOCAB);
        let out = dir.path().join("out.bin");
        import_quiet(dir.path(), &out).unwrap();
        let summary = verify(&out).unwrap();
        let file = fs::read(&out).unwrap();
        let got = as_u16(data(
            &file,
            tensor(&summary, "encoder.blocks.0.mlp.0.weight"),
        ));
        assert_eq!(got, wide.iter().map(|&v| f32_to_f16(v)).collect::<Vec<_>>());
        let got = as_u16(data(
            &file,
            tensor(&summary, "decoder.blocks.0.mlp.2.weight"),
        ));
        let want: Vec<u16> = bf_values
            .iter()
            .map(|&b| f32_to_f16(f32::from_bits(u32::from(b) << 16)))
            .collect();
        assert_eq!(got, want);
        let got = as_f32_bits(data(&file, tensor(&summary, "decoder.ln.weight")));
        assert_eq!(
            got,
            ln_values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    // --- Malformed models ----------------------------------------------------------------------

    #[test]
    fn every_truncation_of_model_bin_is_an_error() {
        let bytes = synthetic().bytes();
        let file = Path::new("model.bin");
        for len in 0..bytes.len() {
            assert!(
                prepare(file, &bytes[..len]).is_err(),
                "truncated at {len} parsed"
            );
        }
        assert!(prepare(file, &bytes).is_ok());
        // Through the files too, for a sample of lengths.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vocabulary.txt"), VOCAB).unwrap();
        let out = dir.path().join("out.bin");
        for len in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
            fs::write(dir.path().join("model.bin"), &bytes[..len]).unwrap();
            let err = import_quiet(dir.path(), &out).unwrap_err();
            assert!(matches!(err, ImportError::Malformed { .. }), "{err}");
            assert!(!out.exists());
        }
        let err = import_quiet(dir.path(), &out).unwrap_err().to_string();
        assert!(
            err.contains("end of file") || err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn flipped_bytes_give_errors_or_models_never_panics() {
        // Every byte outside the tensor data, and every 61st byte of it.
        let (bytes, data) = synthetic().layout();
        let file = Path::new("model.bin");
        let mel = mel_filters(MELS as usize);
        let mut errors = 0;
        let mut data_bytes = 0;
        for at in 0..bytes.len() {
            if data.iter().any(|r| r.contains(&at)) {
                data_bytes += 1;
                if data_bytes % 61 != 0 {
                    continue;
                }
            }
            for mask in [0x01u8, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= mask;
                if let Ok(p) = prepare(file, &corrupt) {
                    // Whatever parses must be writable: every source slice in bounds.
                    let mut sink = io::sink();
                    assert_eq!(p.hparams.n_mels, MELS);
                    write_contents(
                        &mut sink,
                        &p.hparams,
                        &mel,
                        &[b"a".to_vec()],
                        &p,
                        &mut |_| {},
                    )
                    .unwrap();
                } else {
                    errors += 1;
                }
            }
        }
        assert!(errors > 5000, "only {errors} corruptions detected");
    }

    #[test]
    fn malformed_models_name_the_offender() {
        let mut m = synthetic();
        m.version = 5;
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("header: not supported: binary version 5"),
            "{err}"
        );

        let mut m = synthetic();
        m.spec = "TransformerSpec".into();
        assert!(import_error(&m, VOCAB).contains("not WhisperSpec"));

        let mut m = synthetic();
        m.var_mut("encoder/conv2/bias").2 = 9;
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("encoder/conv2/bias: not supported: unknown dtype code 9"),
            "{err}"
        );

        let mut m = synthetic();
        m.var_mut("encoder/conv2/bias").3.pop();
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("encoder/conv2/bias: 15 bytes of data"),
            "{err}"
        );

        let mut m = synthetic();
        m.remove("decoder/layer_0/attention/linear_1/weight");
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("decoder/layer_0/attention/linear_1/weight: missing"),
            "{err}"
        );

        let mut m = synthetic();
        m.remove("encoder/num_heads");
        assert!(import_error(&m, VOCAB).contains("encoder/num_heads: missing"));

        let mut m = synthetic();
        m.remove("decoder/embeddings/weight");
        let err = import_error(&m, VOCAB);
        assert!(err.contains("decoder/embeddings/weight: missing"), "{err}");

        // A layer missing in the middle: layer_1 exists, so layer_0's tensors are required.
        let mut m = synthetic();
        for v in &mut m.vars {
            v.0 = v.0.replace("encoder/layer_0/", "encoder/layer_1/");
        }
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("encoder/layer_0/self_attention/linear_0/weight: missing"),
            "{err}"
        );

        let mut m = synthetic();
        let v = m.var_mut("decoder/layer_0/self_attention/linear_0/weight");
        v.1 = vec![3 * D, 2, D / 2];
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("self_attention/linear_0/weight: has shape [24, 2, 4], expected [24, 8]"),
            "{err}"
        );

        let mut m = synthetic();
        let v = m.var_mut("encoder/layer_0/ffn/linear_0/weight");
        v.2 = 1;
        v.3.truncate(v.3.len() / 2);
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("ffn/linear_0/weight: not supported: I8 weights"),
            "{err}"
        );

        let mut m = synthetic();
        m.vars
            .push(("decoder/extra/weight".into(), vec![2], 4, vec![0; 4]));
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("decoder/extra/weight: a tensor with no place"),
            "{err}"
        );

        let mut m = synthetic();
        let v = m.vars[0].clone();
        m.vars.push(v);
        assert!(import_error(&m, VOCAB).contains("decoder/embeddings/weight: appears twice"));

        let mut m = synthetic();
        m.var_mut("decoder/num_heads").3 = 3u16.to_le_bytes().to_vec();
        let err = import_error(&m, VOCAB);
        assert!(
            err.contains("decoder/num_heads: 3 heads do not divide width 8"),
            "{err}"
        );

        let mut m = synthetic();
        m.var_mut("decoder/layer_norm/beta").0 = "decoder/layer_99999999999/x".into();
        assert!(import_error(&m, VOCAB).contains("layer index beyond"));

        let mut bytes = synthetic().bytes();
        bytes.push(0);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("model.bin"), &bytes).unwrap();
        fs::write(dir.path().join("vocabulary.txt"), VOCAB).unwrap();
        let err = import_quiet(dir.path(), &dir.path().join("o"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("end of file: 1 unexpected bytes after the aliases"),
            "{err}"
        );
    }

    #[test]
    fn bad_vocabularies_and_missing_files_are_errors() {
        let m = synthetic();
        let err = import_error(&m, "!\nabc\u{2603}\n<|endoftext|>\n");
        assert!(
            err.contains("vocabulary.txt: line 2: '☃' (U+2603) is not in GPT-2"),
            "{err}"
        );
        assert!(import_error(&m, "!\n\nb\n").contains("line 2: empty token"));
        assert!(import_error(&m, "<|endoftext|>\n").contains("no regular tokens"));
        assert!(import_error(&m, "a\nb\nc\nd\ne\nf\ng\nh\n")
            .contains("8 regular tokens, but the embeddings have 7 rows"));

        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), &m, VOCAB);
        fs::write(
            dir.path().join("vocabulary.txt"),
            [b'a', b'\n', 0xff, b'\n'],
        )
        .unwrap();
        let err = import_quiet(dir.path(), &dir.path().join("o"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: not UTF-8"), "{err}");
        fs::remove_file(dir.path().join("vocabulary.txt")).unwrap();
        let err = import_quiet(dir.path(), &dir.path().join("o")).unwrap_err();
        assert!(
            matches!(&err, ImportError::Io { file, .. } if file.ends_with("vocabulary.txt")),
            "{err}"
        );
        let err = import_quiet(&dir.path().join("nowhere"), &dir.path().join("o")).unwrap_err();
        assert!(
            matches!(&err, ImportError::Io { file, .. } if file.ends_with("model.bin")),
            "{err}"
        );

        // No folder for the output: an I/O error, no partial file.
        write_model(dir.path(), &m, VOCAB);
        let out = dir.path().join("missing-dir").join("out.bin");
        assert!(matches!(
            import_quiet(dir.path(), &out),
            Err(ImportError::Io { .. })
        ));
    }

    #[test]
    fn vocabulary_without_special_tokens_or_with_crlf_is_read() {
        let dir = tempfile::tempdir().unwrap();
        write_model(
            dir.path(),
            &synthetic(),
            "a\r\n\u{120}b\r\n<|endoftext|>\r\n",
        );
        let out = dir.path().join("out.bin");
        assert_eq!(import_quiet(dir.path(), &out).unwrap().vocab_tokens, 2);
        write_model(dir.path(), &synthetic(), "a\nb\nc");
        assert_eq!(import_quiet(dir.path(), &out).unwrap().vocab_tokens, 3);
        assert_eq!(verify(&out).unwrap().vocab_tokens, 3);
    }

    // --- verify on damaged ggml files ---------------------------------------------------------

    #[test]
    fn verify_rejects_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), &synthetic(), VOCAB);
        let good = dir.path().join("good.bin");
        import_quiet(dir.path(), &good).unwrap();
        let bytes = fs::read(&good).unwrap();
        let summary = verify(&good).unwrap();
        let bad = dir.path().join("bad.bin");
        let check = |content: &[u8]| -> String {
            fs::write(&bad, content).unwrap();
            verify(&bad).expect_err("damaged file verified").to_string()
        };

        for len in (0..bytes.len())
            .step_by(211)
            .chain(bytes.len() - 3..bytes.len())
        {
            check(&bytes[..len]);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(check(&longer).contains("tensor #50"));

        let mut v = bytes.clone();
        v[0] = b'x';
        assert!(check(&v).contains("not a ggml file"));

        // A tensor renamed: unknown to whisper.cpp.
        let t = tensor(&summary, "encoder.conv1.weight");
        let name_at = t.data_offset as usize - t.name.len();
        let mut v = bytes.clone();
        v[name_at + "encoder.conv".len()] = b'9';
        assert!(check(&v).contains("encoder.conv9.weight: not a tensor whisper.cpp loads"));

        // A tensor's type changed from f16 to f32 (sizes then disagree with the file).
        let ftype_at = name_at - 4 * t.ne.len() - 4;
        let mut v = bytes.clone();
        v[ftype_at] = 0;
        let err = check(&v);
        assert!(
            err.contains("encoder.conv1.weight") || err.contains("tensor #"),
            "{err}"
        );

        // The mel shape and the vocabulary count.
        let mut v = bytes.clone();
        v[52] = 200;
        assert!(check(&v).contains("mel filters: shape 80 x 200"));
        let vocab_at = 56 + 80 * 201 * 4;
        let mut v = bytes.clone();
        v[vocab_at] = 8;
        assert!(check(&v).contains("vocabulary: 8 tokens"));
        let mut v = bytes.clone();
        v[4 + 4 * 4] = 0x7f; // n_audio_layer = 127: ok as a number, tensors then missing
        let err = check(&v);
        assert!(
            err.contains("missing") || err.contains("not a tensor"),
            "{err}"
        );
        let mut v = bytes.clone();
        v[4 + 4 * 10] = 7; // ftype 7 (a quantised type)
        assert!(check(&v).contains("ftype: not supported"));

        // A tensor written twice.
        let first = &summary.tensor_headers[0];
        let header_start = first.data_offset as usize - first.name.len() - 4 * first.ne.len() - 12;
        let mut v = bytes.clone();
        v.extend_from_slice(&bytes[header_start..(first.data_offset + first.data_len) as usize]);
        assert!(check(&v).contains("encoder.positional_embedding: appears twice"));

        // A tensor left out.
        let last = summary.tensor_headers.last().unwrap();
        let last_start = last.data_offset as usize - last.name.len() - 4 * last.ne.len() - 12;
        assert!(check(&bytes[..last_start]).contains("decoder.ln.bias: missing"));
    }

    // --- f16 -------------------------------------------------------------------------------------

    #[test]
    fn f16_conversions() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f32_to_f16(x) & 0x7c00 == 0x7c00 && f32_to_f16(x) & 0x3ff != 0);
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#06x}");
            }
        }
        for (h, x) in [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x0001, 2f32.powi(-24)),
            (0x0400, 2f32.powi(-14)),
            (0x7bff, 65504.0),
            (0x7c00, f32::INFINITY),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(h), x);
            assert_eq!(f32_to_f16(x), h);
        }
        // Ties to even, at normal and subnormal scale, and the overflow threshold.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-24)), 0x0002);
        assert_eq!(f32_to_f16(0.75 * 2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-14) - 2f32.powi(-25)), 0x0400);
        assert_eq!(f32_to_f16(65519.99), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(-1e-30), 0x8000);
        assert_eq!(f32_to_f16(f32::from_bits(1)), 0);
        // Every midpoint between neighbouring finite f16 values rounds to the even one, and
        // anything a little off the midpoint to the nearer one.
        for h in 0..0x7bffu16 {
            let (a, b) = (f16_to_f32(h), f16_to_f32(h + 1));
            let mid = (a + b) / 2.0; // exact: f32 has 13 more bits
            let even = if h % 2 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16(mid), even, "{h:#06x}");
            assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() - 1)), h);
            assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() + 1)), h + 1);
            assert_eq!(f32_to_f16(-mid), even | 0x8000);
        }
    }

    // --- GPT-2 bytes ---------------------------------------------------------------------------

    #[test]
    fn gpt2_byte_alphabet_is_a_bijection() {
        let table = gpt2_decoder();
        let mut seen = [false; 256];
        for b in table.iter().flatten() {
            assert!(!seen[usize::from(*b)]);
            seen[usize::from(*b)] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(table.iter().flatten().count(), 256);
        // Known pairs from GPT-2's bytes_to_unicode.
        for (c, b) in [
            ('!', b'!'),
            ('Ġ', b' '),
            ('Ċ', b'\n'),
            ('ĉ', b'\t'),
            ('Ā', 0),
            ('ġ', 0x7f),
            ('Ń', 0xad),
            ('ÿ', 0xff),
            ('č', b'\r'),
        ] {
            assert_eq!(table[c as usize], Some(b), "{c}");
        }
        assert_eq!(table[usize::from(b' ')], None);
        assert_eq!(table[0xad], None);
    }

    // --- Mel filterbank ------------------------------------------------------------------------

    /// Each filter's (first non-zero bin, peak bin, last non-zero bin), from
    /// scripts/mel-reference.py.
    const SPANS: [(usize, usize, usize); 80] = [
        (1, 1, 1),
        (1, 2, 2),
        (2, 3, 3),
        (3, 4, 4),
        (4, 5, 5),
        (5, 6, 6),
        (6, 7, 7),
        (7, 7, 8),
        (8, 8, 9),
        (9, 9, 10),
        (10, 10, 11),
        (11, 11, 12),
        (12, 12, 13),
        (13, 13, 13),
        (14, 14, 14),
        (14, 15, 15),
        (15, 16, 16),
        (16, 17, 17),
        (17, 18, 18),
        (18, 19, 19),
        (19, 20, 20),
        (20, 20, 21),
        (21, 21, 22),
        (22, 22, 23),
        (23, 23, 24),
        (24, 24, 25),
        (25, 25, 26),
        (26, 26, 27),
        (27, 27, 28),
        (28, 28, 29),
        (29, 29, 30),
        (30, 30, 31),
        (31, 32, 32),
        (32, 33, 34),
        (33, 34, 35),
        (35, 36, 36),
        (36, 37, 38),
        (37, 38, 39),
        (39, 40, 41),
        (40, 41, 43),
        (42, 43, 44),
        (44, 45, 46),
        (45, 46, 48),
        (47, 48, 50),
        (49, 50, 52),
        (51, 52, 54),
        (53, 54, 56),
        (55, 56, 58),
        (57, 59, 60),
        (59, 61, 63),
        (61, 63, 65),
        (64, 66, 68),
        (66, 68, 70),
        (69, 71, 73),
        (71, 74, 76),
        (74, 77, 79),
        (77, 80, 82),
        (80, 83, 85),
        (83, 86, 89),
        (86, 89, 92),
        (90, 93, 96),
        (93, 96, 100),
        (97, 100, 104),
        (101, 104, 108),
        (105, 108, 112),
        (109, 112, 116),
        (113, 117, 121),
        (117, 121, 126),
        (122, 126, 131),
        (127, 131, 136),
        (132, 136, 141),
        (137, 142, 147),
        (142, 147, 152),
        (148, 153, 158),
        (153, 159, 165),
        (159, 165, 171),
        (166, 172, 178),
        (172, 178, 185),
        (179, 185, 192),
        (186, 192, 199),
    ];

    #[test]
    fn mel_filters_match_reference() {
        let bank = mel_filters(80);
        assert_eq!(bank.len(), 80 * 201);
        let row = |i: usize| &bank[i * 201..(i + 1) * 201];

        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) entries as published alongside
        // other Whisper front ends, and the same points from scripts/mel-reference.py (equal
        // bit for bit but [79][192], where librosa's value is one f32 step lower).
        for (i, k, librosa, reference_bits) in [
            (0, 1, 0.024_862_594_902_515_41, 0x3ccb_aca4u32),
            (1, 1, 0.001_990_821_911_022_067, 0x3b02_7873),
            (1, 2, 0.022_871_771_827_340_126, 0x3cbb_5d95),
            (9, 10, 0.006_945_197_004_824_877, 0x3be3_9489),
            (39, 41, 0.011_486_922_390_758_991, 0x3c3c_33a5),
            (69, 131, 0.004_875_534_214_079_38, 0x3b9f_c2f2),
            (79, 190, 0.002_232_054_946_944_117_5, 0x3b12_47ab),
            (79, 192, 0.003_164_711_641_147_732_7, 0x3b4f_670e),
            (79, 199, 0.000_448_759_004_939_347_5, 0x39eb_476a),
        ] {
            let v = row(i)[k];
            assert_eq!(v.to_bits(), reference_bits, "[{i}][{k}]");
            assert!(
                ((f64::from(v) - librosa) / librosa).abs() < 1.2e-7,
                "[{i}][{k}] {v}"
            );
        }
        let sum: f64 = bank.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = bank.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((sum - 1.999_024_092_387_117).abs() < 1e-9, "{sum}");
        assert!(
            (sum_sq - 0.021_185_515_307_317_198).abs() < 1e-12,
            "{sum_sq}"
        );

        // Shape of each filter: one contiguous run of non-zero bins rising to a single peak
        // and falling again, where the reference puts it.
        for (i, &(first, peak, last)) in SPANS.iter().enumerate() {
            let r = row(i);
            assert!(r.iter().all(|v| v.is_finite() && *v >= 0.0));
            let nz: Vec<usize> = (0..201).filter(|&k| r[k] > 0.0).collect();
            assert_eq!((nz[0], *nz.last().unwrap()), (first, last), "filter {i}");
            assert_eq!(nz.len(), last - first + 1, "filter {i} has a gap");
            let top = (0..201).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
            assert_eq!(top, peak, "filter {i}");
            assert!(
                r[first..=peak].windows(2).all(|w| w[0] <= w[1]),
                "filter {i} rises"
            );
            assert!(
                r[peak..=last].windows(2).all(|w| w[0] >= w[1]),
                "filter {i} falls"
            );
        }
    }

    #[test]
    fn mel_filters_are_slaney_triangles_of_unit_area() {
        // Slaney's scale: 3 mels per 200 Hz up to 1 kHz, then 27 mels per factor 6.4. The 82
        // edges are evenly spaced in mels from 0 to mel(8000 Hz); filter i rises from edge i to
        // edge i+1 and falls to edge i+2.
        let mel = |f: f64| {
            if f < 1000.0 {
                f * 3.0 / 200.0
            } else {
                15.0 + 27.0 * (f / 1000.0).ln() / 6.4f64.ln()
            }
        };
        let hz = |m: f64| {
            if m < 15.0 {
                m * 200.0 / 3.0
            } else {
                1000.0 * 6.4f64.powf((m - 15.0) / 27.0)
            }
        };
        let step = mel(8000.0) / 81.0;
        let edges: Vec<f64> = (0..82).map(|i| hz(i as f64 * step)).collect();
        let bank = mel_filters(80);
        let bin_hz = 40.0;
        for i in 0..80 {
            let r = &bank[i * 201..(i + 1) * 201];
            let (lo, mid, hi) = (edges[i], edges[i + 1], edges[i + 2]);
            // Every value is the triangle of height 2 / (hi - lo) (area 1 in Hz) at the bin.
            for (k, &v) in r.iter().enumerate() {
                let f = k as f64 * bin_hz;
                let tri = ((f - lo) / (mid - lo)).min((hi - f) / (hi - mid)).max(0.0);
                let want = tri * 2.0 / (hi - lo);
                assert!(
                    (f64::from(v) - want).abs() <= 1e-6 * want + 1e-12,
                    "[{i}][{k}] {v} {want}"
                );
            }
            // Sampling a continuous piecewise-linear function every bin_hz: by Euler-Maclaurin
            // each kink (slope jump J) moves the sum times bin_hz from the integral by at most
            // J bin_hz^2 / 12. The jumps add up to 4 / (a b) for rise a and fall b, so the sum
            // is 1 / bin_hz within bin_hz^2 / (3 a b), plus f32 rounding.
            let (a, b) = (mid - lo, hi - mid);
            let area: f64 = r.iter().map(|&v| f64::from(v) * bin_hz).sum();
            let bound = bin_hz * bin_hz / (3.0 * a * b) + 1e-5;
            assert!(
                (area - 1.0).abs() <= bound,
                "filter {i}: area {area}, bound {bound}"
            );
        }
    }
}
