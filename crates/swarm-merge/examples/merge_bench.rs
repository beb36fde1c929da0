//! Speed and memory of swarm-merge on SmolLM2-135M-sized inputs.
//!
//! `cargo run --release -p swarm-merge --example merge_bench [-- --keep DIR] [--merges-only]`
//!
//! The base is SmolLM2-135M-Instruct dequantised from the default GGUF (swarm's model cache,
//! fetched on first use; `SWARM_SMOLLM2_GGUF` points at a copy); three synthetic "experts"
//! are the base plus Gaussian noise of 1% of each tensor's RMS. Prints: factorisation time
//! (full rank and r = 64), genome crossover + mutation time, materialisation time (memory and
//! HF dir) next to its two floors (the I/O floor, and the arithmetic floor: the FLOP of the
//! low-rank products at the GEMM rate measured here), and linear / TIES / DARE merge time and
//! peak RSS (each merge runs in a child process so its peak memory is its own), next to the
//! time it takes just to read the input bytes and write the output bytes.
//! `--merges-only` skips factorisation, genome operators and materialisation.
//!
//! `--keep DIR` keeps the four HF dirs (base, e1, e2, e3) for mergekit's timing:
//! `.venv-merge/bin/python scripts/merge/make_mergekit_fixtures.py --bench DIR/base DIR/e1 DIR/e2`,
//! and the factor sets (`DIR/factors-*.safetensors`), so that one materialisation can be timed
//! again on its own: `merge_bench --materialise DIR/base DIR/factors-r64.safetensors OUT`
//! (the bench's child genome into the fresh HF dir OUT, or into memory if OUT is `-`; prints
//! `seconds peak_rss_mib`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device};
use rand::SeedableRng;
use swarm_merge::testing::{bench_child, perturbed, save_hf_dir};
use swarm_merge::{
    materialise_flop, materialise_to_dir, materialise_to_weights, CrossoverParams, DirOutput,
    FactorSet, FactoriseOptions, Genome, MergePlan, Rank, RunOptions,
};
use swarm_model::{GgufFile, TensorSource, Weights};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Child mode: `merge_bench --merge CONFIG OUT`, prints `seconds peak_rss_mib`.
fn child_merge(config: &Path, out: &Path) -> anyhow::Result<()> {
    let plan = MergePlan::from_yaml(&std::fs::read_to_string(config)?)?;
    let start = Instant::now();
    swarm_merge::run(
        &plan,
        out,
        &RunOptions { overwrite: true },
        &mut |_, _, _| {},
    )?;
    println!("{} {}", start.elapsed().as_secs_f64(), peak_rss_mib());
    Ok(())
}

/// Child mode: `merge_bench --materialise BASE_DIR FACTORS OUT` (OUT `-`: into memory), prints
/// `seconds peak_rss_mib`.
fn child_materialise(base: &Path, factors: &Path, out: &Path) -> anyhow::Result<()> {
    let base = swarm_merge::SafetensorsReader::open_dir(base)?;
    let factors = FactorSet::load(factors)?;
    let child = bench_child(&factors)?;
    let start = Instant::now();
    if out == Path::new("-") {
        materialise_to_weights(&base, &factors, &child, &Device::Cpu)?;
    } else {
        materialise_to_dir(
            &base,
            &factors,
            &child,
            &Device::Cpu,
            &DirOutput::new(out),
            |_| Ok(()),
        )?;
    }
    println!("{} {}", start.elapsed().as_secs_f64(), peak_rss_mib());
    Ok(())
}

/// Time to read every input file and write (and sync) `out_bytes` bytes, through the page
/// cache (`direct` false) or with O_DIRECT from an aligned buffer in 4 MiB writes (`direct`
/// true, Linux only: as the merge writer does where the file system allows it).
fn io_floor(
    inputs: &[PathBuf],
    out_bytes: usize,
    scratch: &Path,
    direct: bool,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 22];
    for p in inputs {
        let mut f = std::fs::File::open(p.join("model.safetensors"))?;
        while f.read(&mut buf)? > 0 {}
    }
    let path = scratch.join("io-floor.bin");
    const BLOCK: usize = 1 << 22;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_DIRECT);
    }
    let mut f = options.open(&path)?;
    // A 4 KiB-aligned block inside a larger buffer, as O_DIRECT needs.
    let mut chunk = vec![1u8; BLOCK + 4096];
    let at = chunk.as_ptr().align_offset(4096);
    let block = &mut chunk[at..at + BLOCK];
    let mut left = out_bytes.next_multiple_of(4096);
    while left > 0 {
        let n = left.min(BLOCK);
        f.write_all(&block[..n])?;
        left -= n;
    }
    f.set_len(out_bytes as u64)?;
    f.sync_all()?;
    let t = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(t)
}

/// f32 GEMM rate (FLOP/s) of faer on this machine, on the shape of an MLP matrix's update
/// (8192 x 576 times 576 x 1536, accumulated), median of 3.
fn gemm_rate() -> f64 {
    use faer::{linalg::matmul::matmul, Accum, Mat, Par};
    let (m, k, n) = (8192, 576, 1536);
    let a = Mat::<f32>::from_fn(m, k, |i, j| ((i * 7 + j) % 13) as f32 * 0.01);
    let b = Mat::<f32>::from_fn(k, n, |i, j| ((i + j * 3) % 11) as f32 * 0.01);
    let mut c = Mat::<f32>::zeros(m, n);
    let times: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            matmul(
                c.as_mut(),
                Accum::Add,
                a.as_ref(),
                b.as_ref(),
                1.0,
                Par::rayon(0),
            );
            t.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * (m * k * n) as f64 / median(times)
}

fn main() -> anyhow::Result<()> {
    // As the swarm binary does: freed buffers stay with malloc for reuse.
    swarm_model::configure_allocator();
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--merge" {
        return child_merge(Path::new(&args[2]), Path::new(&args[3]));
    }
    if args.len() == 5 && args[1] == "--materialise" {
        let path = |i: usize| Path::new(&args[i]);
        return child_materialise(path(2), path(3), path(4));
    }
    let keep = args
        .iter()
        .position(|a| a == "--keep")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let merges_only = args.iter().any(|a| a == "--merges-only");
    let gguf = swarm_model::ensure_default_model()?.display().to_string();
    let cpu = Device::Cpu;
    let t = Instant::now();
    let file = GgufFile::open(Path::new(&gguf)).with_context(|| gguf.clone())?;
    let config = file.config()?;
    let base = Weights::from_source(&file, &cpu, DType::F32)?;
    println!(
        "base: {} ({} tensors, {:.0} MB f32) dequantised in {:.1} s; {} rayon threads",
        gguf,
        base.len(),
        base.size_in_bytes() as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let experts: Vec<Weights> = (0..3).map(|k| perturbed(&base, 10 + k, 0.01)).collect();
    let named: Vec<(String, &Weights)> = experts
        .iter()
        .enumerate()
        .map(|(k, w)| (format!("e{}", k + 1), w))
        .collect();
    let refs: Vec<(&str, &dyn TensorSource)> = named
        .iter()
        .map(|(n, w)| (n.as_str(), *w as &dyn TensorSource))
        .collect();

    // Factorisation.
    let embed = "model.embed_tokens.weight".to_string();
    let mut factor_sets = Vec::new();
    let factorisations = if merges_only {
        Vec::new()
    } else {
        vec![
            (
                "full",
                "full rank, 3 experts",
                FactoriseOptions {
                    rank: Rank::Full,
                    ..FactoriseOptions::default()
                },
            ),
            (
                "r64",
                "r = 64, 3 experts",
                FactoriseOptions {
                    rank: Rank::Top(64),
                    measure_error: false,
                    ..FactoriseOptions::default()
                },
            ),
            (
                "r64-dense-embedding",
                "r = 64, 3 experts, embedding dense",
                FactoriseOptions {
                    rank: Rank::Top(64),
                    measure_error: false,
                    dense: vec![embed.clone()],
                    ..FactoriseOptions::default()
                },
            ),
        ]
    };
    for (file, label, opts) in factorisations {
        let t = Instant::now();
        let f = FactorSet::factorise(&base, &refs, &opts)?;
        println!(
            "factorise {label}: {:.1} s, factors {:.0} MB, genome {} coefficients, max rel error {:.2e}",
            t.elapsed().as_secs_f64(),
            f.size_in_bytes() as f64 / 1e6,
            f.layout().len(),
            f.max_rel_error()
        );
        if let Some(dir) = &keep {
            std::fs::create_dir_all(dir)?;
            f.save(&dir.join(format!("factors-{file}.safetensors")))?;
        }
        factor_sets.push((label, f));
    }
    // The embedding's SVD on its own.
    if !merges_only {
        let tau = (experts[0].get(&embed)? - base.get(&embed)?)?;
        let mut one = Weights::new();
        one.insert(embed.clone(), base.get(&embed)?.clone());
        let mut one_e = Weights::new();
        one_e.insert(embed.clone(), (base.get(&embed)? + tau)?);
        let t = Instant::now();
        FactorSet::factorise(
            &one,
            &[("e1", &one_e as &dyn TensorSource)],
            &FactoriseOptions {
                measure_error: false,
                ..FactoriseOptions::default()
            },
        )?;
        println!(
            "  of which one 49152x576 embedding SVD: {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

    // Genome operators.
    for (label, f) in &factor_sets {
        let l = f.layout();
        let (a, b) = (Genome::expert(l, 0)?, Genome::expert(l, 1)?);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let times: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                let mut c = a.crossover(&b, CrossoverParams::default(), &mut rng)?;
                c.mutate(2, 0.1, &mut rng)?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<anyhow::Result<_>>()?;
        println!(
            "crossover + mutation ({label}): {:.2} ms (median of 20)",
            median(times)
        );
    }

    // Materialisation.
    let scratch = tempfile::tempdir_in(keep.as_deref().unwrap_or(Path::new("/tmp")))
        .or_else(|_| tempfile::tempdir())?;
    let dirs = keep.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    let base_dir = dirs.join("base");
    save_hf_dir(&base_dir, &config, &base)?;
    let mut input_dirs = vec![base_dir.clone()];
    for (name, w) in &named {
        let d = dirs.join(name);
        save_hf_dir(&d, &config, w)?;
        input_dirs.push(d);
    }
    let base_files = swarm_merge::SafetensorsReader::open_dir(&base_dir)?;
    let model_bytes = base.size_in_bytes();
    // Both ways of writing, median of 3 each: the faster is the floor (as for the merges).
    let floor_of = |direct: bool| -> anyhow::Result<f64> {
        Ok(median(
            (0..3)
                .map(|_| io_floor(&input_dirs[..1], model_bytes, scratch.path(), direct))
                .collect::<anyhow::Result<_>>()?,
        ))
    };
    let (buffered, direct) = (floor_of(false)?, floor_of(true)?);
    let floor_1 = buffered.min(direct);
    println!(
        "read 1 model + write 1 model: {buffered:.2} s through the page cache, {direct:.2} s with O_DIRECT"
    );
    let rate = if factor_sets.is_empty() {
        f64::NAN
    } else {
        gemm_rate()
    };
    if !factor_sets.is_empty() {
        println!(
            "f32 GEMM rate (faer, all threads): {:.1} GFLOP/s",
            rate / 1e9
        );
    }
    for (label, f) in &factor_sets {
        let l = f.layout();
        let child = bench_child(f)?;
        let flop = materialise_flop(f, &child);
        let t = Instant::now();
        let w = materialise_to_weights(&base_files, f, &child, &cpu)?;
        let mem = t.elapsed().as_secs_f64();
        drop(w);
        // Into a fresh dir, as the I/O floor writes a fresh file (see the merges below).
        let out = scratch.path().join("elite");
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        let t = Instant::now();
        materialise_to_dir(&base_files, f, &child, &cpu, &DirOutput::new(&out), |_| {
            Ok(())
        })?;
        let dir = t.elapsed().as_secs_f64();
        let expert = Genome::expert(l, 0)?;
        let t = Instant::now();
        materialise_to_weights(&base_files, f, &expert, &cpu)?;
        let single = t.elapsed().as_secs_f64();
        let arithmetic = flop / rate;
        println!(
            "materialise ({label}): child of 3 experts {mem:.2} s to memory, {dir:.2} s to an HF dir; one expert {single:.2} s"
        );
        println!(
            "  floors: I/O {floor_1:.2} s (HF dir at {:.1}x), arithmetic {:.0} GFLOP = {arithmetic:.2} s at the measured GEMM rate (HF dir at {:.1}x); the bound is the {}",
            dir / floor_1,
            flop / 1e9,
            dir / arithmetic,
            if arithmetic > floor_1 { "arithmetic" } else { "I/O" }
        );
    }

    // Merges, each in its own process.
    let exe = std::env::current_exe()?;
    // Both ways of writing, alternately, median of 3 each: the smaller is the floor.
    let mut floors = Vec::new();
    for n_inputs in [4, 3] {
        let (mut buffered, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            buffered.push(io_floor(
                &input_dirs[..n_inputs],
                model_bytes,
                scratch.path(),
                false,
            )?);
            direct.push(io_floor(
                &input_dirs[..n_inputs],
                model_bytes,
                scratch.path(),
                true,
            )?);
        }
        let (buffered, direct) = (median(buffered), median(direct));
        println!(
            "read {n_inputs} models + write 1: {buffered:.2} s through the page cache, {direct:.2} s with O_DIRECT"
        );
        floors.push(buffered.min(direct));
    }
    let (floor_4, floor_3) = (floors[0], floors[1]);
    let d = |i: usize| input_dirs[i].display().to_string();
    let configs = [
        (
            "linear (base + 3 experts)",
            format!(
                "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.4}}\n  - model: {}\n    parameters: {{weight: 0.2}}\n  - model: {}\n    parameters: {{weight: 0.2}}\n  - model: {}\n    parameters: {{weight: 0.2}}\ndtype: float32\n",
                d(0), d(1), d(2), d(3)
            ),
            floor_4,
        ),
        (
            "ties (base + 2 experts, density 0.5)",
            format!(
                "merge_method: ties\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5, density: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: float32\n",
                d(0), d(1), d(2)
            ),
            floor_3,
        ),
        (
            "linear (base + 2 experts, as against mergekit)",
            format!(
                "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.4}}\n  - model: {}\n    parameters: {{weight: 0.3}}\n  - model: {}\n    parameters: {{weight: 0.3}}\ndtype: float32\n",
                d(0), d(1), d(2)
            ),
            floor_3,
        ),
        (
            "dare_ties (base + 2 experts, density 0.5)",
            format!(
                "merge_method: dare_ties\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5, density: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: float32\n",
                d(0), d(1), d(2)
            ),
            floor_3,
        ),
    ];
    println!(
        "one model: {:.0} MiB; largest tensor: {:.0} MiB",
        model_bytes as f64 / (1 << 20) as f64,
        (config.vocab_size * config.hidden_size * 4) as f64 / (1 << 20) as f64
    );
    for (label, yaml, floor) in configs {
        let cfg = scratch.path().join("merge.yaml");
        std::fs::write(&cfg, yaml)?;
        let mut runs = Vec::new();
        for _ in 0..3 {
            // Into a fresh dir, as the floor writes a fresh file: replacing the last run's
            // output would add the removal of a 513 MB file to the merge's time.
            let merged = scratch.path().join("merged");
            if merged.exists() {
                std::fs::remove_dir_all(&merged)?;
            }
            let out = std::process::Command::new(&exe)
                .args(["--merge"])
                .arg(&cfg)
                .arg(scratch.path().join("merged"))
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let mut it = text.split_whitespace().map(|x| x.parse::<f64>());
            let (secs, rss) = (it.next(), it.next());
            if let (Some(Ok(s)), Some(Ok(r))) = (secs, rss) {
                runs.push((s, r));
            }
        }
        let secs = median(runs.iter().map(|r| r.0).collect());
        let rss = runs.iter().map(|r| r.1).fold(0.0, f64::max);
        println!(
            "merge {label}: {secs:.2} s (median of 3; {:.2}x the I/O floor, the faster write), peak RSS {rss:.0} MiB",
            secs / floor
        );
    }
    if let Some(k) = keep {
        println!("kept the input dirs in {}", k.display());
    }
    Ok(())
}
