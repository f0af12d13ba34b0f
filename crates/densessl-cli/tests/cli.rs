//! End-to-end tests of the `densessl` binary on tiny settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::Scratch;

fn densessl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densessl"))
        .args(args)
        .env("DENSESSL_QUIET", "1")
        .output()
        .expect("binary runs")
}

fn temp_dir(name: &str) -> Scratch {
    Scratch::new(&format!("cli-{name}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn procedural_tree_is_byte_identical_for_one_seed() {
    let dir = temp_dir("procedural");
    let write = |name: &str, seed: &str| {
        let out = dir.join(name);
        let o = densessl(&["data", "procedural", "--out", out.to_str().unwrap(), "--size", "32", "--train", "6", "--val", "3", "--seed", seed]);
        assert!(o.status.success(), "{}", stderr(&o));
        files(&out)
    };
    let (a, b, c) = (write("a", "4"), write("b", "4"), write("c", "5"));
    assert_eq!(a.len(), 6 + 6 + 3 + 3 + 2 + 1, "images, masks, two lists, classes.txt");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn unknown_config_key_names_key_file_and_line() {
    let dir = temp_dir("badkey");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "seed = 1\n[train]\nsteps = 2\nbatchsize = 4\n").unwrap();
    let o = densessl(&["pretrain", "--config", config.to_str().unwrap(), "--out", dir.join("run").to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.toml") && e.contains("batchsize") && e.contains("line 4"), "{e}");
    assert!(!dir.join("run").exists(), "nothing written for a bad config");
}

#[test]
fn device_without_its_backend_says_which_feature() {
    let o = densessl(&["finetune", "--device", "cuda:0", "--set", "train.steps=1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
}

#[test]
fn pretrain_then_finetune_then_eval_end_to_end() {
    let dir = temp_dir("e2e");
    let data = ["data.size=32", "data.train=24", "data.val=8", "encoder.base_width=8"];
    let mut args = vec!["pretrain", "--out"];
    let pre = dir.join("pre");
    args.push(pre.to_str().unwrap());
    let sets = [
        "train.steps=3", "train.batch_size=8", "train.view_size=32", "train.log_every=1",
        "method.queue_size=64", "method.dim=16",
    ];
    for s in data.iter().chain(&sets) {
        args.extend(["--set", s]);
    }
    let o = densessl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["config.toml", "manifest.json", "metrics.jsonl", "summary.json", "checkpoints/encoder.safetensors"] {
        assert!(pre.join(f).exists(), "pretrain wrote {f}");
    }
    let config = std::fs::read_to_string(pre.join("config.toml")).unwrap();
    assert!(config.contains("queue_size = 64") && config.contains("temperature = 0.2"), "{config}");
    let metrics = std::fs::read_to_string(pre.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 3);

    let ft = dir.join("ft");
    let ckpt = pre.join("checkpoints/encoder.safetensors");
    let mut args = vec!["finetune", "--init", ckpt.to_str().unwrap(), "--out", ft.to_str().unwrap()];
    for s in data.iter().chain(&["train.steps=3", "train.batch_size=4", "head.channels=16"]) {
        args.extend(["--set", s]);
    }
    let o = densessl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = std::fs::read_to_string(ft.join("manifest.json")).unwrap();
    assert!(manifest.contains("encoder.safetensors (Densessl, prefix '', 100 tensors; fingerprint"), "{manifest}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ft.join("summary.json")).unwrap()).unwrap();
    // Every logged window says how long the step waited for the data loader.
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(ft.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("loss").is_some())
        .collect();
    assert!(!logged.is_empty() && logged.iter().all(|v| v["input_wait_s"].as_f64().is_some_and(|w| w >= 0.0)), "{logged:?}");

    let model = ft.join("checkpoints/model.safetensors");
    let o = densessl(&["eval", "--checkpoint", model.to_str().unwrap(), "--dataset", "procedural", "--size", "32", "--val", "8", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(eval["iou"].as_array().unwrap().len(), 6);
    let (a, b) = (eval["miou"].as_f64().unwrap(), summary["miou"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-9, "eval {a} vs fine-tune summary {b}");

    // A finished run is never overwritten.
    let o = densessl(&args);
    assert!(!o.status.success() && stderr(&o).contains("already holds a finished run"), "{}", stderr(&o));
    // An encoder checkpoint is not a segmentation model.
    let o = densessl(&["eval", "--checkpoint", ckpt.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("fine-tune it first"), "{}", stderr(&o));

    // Continued pre-training of another method from this encoder, with the encoder frozen
    // by an LR multiplier of 0: its convolutions stay exactly the parent's, and the manifest
    // names the parent and its fingerprint.
    let cont = dir.join("cont");
    let mut args = vec!["pretrain", "--init", ckpt.to_str().unwrap(), "--out", cont.to_str().unwrap()];
    for s in data.iter().chain(&[
        "method.name=\"byol\"", "method.dim=16", "method.hidden=32", "train.steps=2", "train.batch_size=8",
        "train.view_size=32", "optim.encoder_lr_mult=0.0",
    ]) {
        args.extend(["--set", s]);
    }
    let o = densessl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = std::fs::read_to_string(cont.join("manifest.json")).unwrap();
    assert!(manifest.contains("encoder.safetensors (Densessl") && manifest.contains("fingerprint"), "{manifest}");
    let device = densessl::device::Device::flex();
    let conv1 = |path: &Path| -> Vec<f32> {
        let (net, _) = densessl::train::checkpoint::load_encoder(path, &device).unwrap();
        net.layer1[0].conv1.weight.val().into_data().try_to_vec().unwrap()
    };
    assert_eq!(conv1(&ckpt), conv1(&cont.join("checkpoints/encoder.safetensors")));
}

/// Writes a toy Fashion-MNIST (uncompressed IDX): item i is a filled square of class i % 10.
fn toy_fashion_mnist(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, count) in [("train", 30u32), ("t10k", 10)] {
        let mut images = vec![0, 0, 8, 3];
        for d in [count, 28, 28] {
            images.extend(d.to_be_bytes());
        }
        for _ in 0..count {
            images.extend((0..28 * 28).map(|p| if (5..23).contains(&(p / 28)) && (5..23).contains(&(p % 28)) { 220u8 } else { 0 }));
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend(count.to_be_bytes());
        labels.extend((0..count).map(|i| (i % 10) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

#[test]
fn fashion_scenes_are_byte_identical_and_check_names_every_bad_file() {
    let dir = temp_dir("fashion");
    toy_fashion_mnist(&dir.join("idx"));
    let write = |name: &str, seed: &str| {
        let out = dir.join(name);
        let o = densessl(&[
            "data", "fashion-scenes", "--out", out.to_str().unwrap(), "--source", dir.join("idx").to_str().unwrap(),
            "--size", "32", "--train", "5", "--val", "3", "--unlabeled", "4", "--seed", seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        files(&out)
    };
    let (a, b, c) = (write("a", "1"), write("b", "1"), write("c", "2"));
    assert_eq!(a.len(), 5 + 5 + 3 + 3 + 2 + 1 + 4);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let root = dir.join("a");
    let o = densessl(&["data", "check", root.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["num_classes"], 11, "from classes.txt");
    assert_eq!(report["splits"].as_array().unwrap().len(), 2);
    assert_eq!(report["splits"][0]["valid"], 5);
    // Two bad files: both are named, and the exit status says so.
    std::fs::write(root.join("JPEGImages/train_000002.jpg"), b"\xff\xd8\xff truncated").unwrap();
    std::fs::remove_file(root.join("SegmentationClass/train_000004.png")).unwrap();
    let o = densessl(&["data", "check", root.to_str().unwrap(), "--split", "train"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("train_000002.jpg") && out.contains("train_000004.png"), "{out}");
    assert!(stderr(&o).contains("2 problem(s)"), "{}", stderr(&o));
    // A missing source says how to get Fashion-MNIST.
    let o = densessl(&["data", "fashion-scenes", "--out", dir.join("d").to_str().unwrap(), "--source", dir.join("nowhere").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("dataset-fashion-mnist"), "{}", stderr(&o));
}

#[test]
fn import_export_and_features_from_a_torchvision_file() {
    let dir = temp_dir("weights");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../densessl/tests/fixtures/resnet18_w8.pth");
    let imported = dir.join("r18.safetensors");
    let o = densessl(&["import", fixture, "--arch", "resnet18", "--base-width", "8", "--out", imported.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("100 tensors mapped") && stdout.contains("fc.*"), "{stdout}");
    // Without --arch a foreign file cannot be read, and the error says what to pass.
    let o = densessl(&["import", fixture, "--out", dir.join("x.safetensors").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--arch"), "{}", stderr(&o));
    // The wrong width fails and writes nothing.
    let o = densessl(&["import", fixture, "--arch", "resnet18", "--out", dir.join("y.safetensors").to_str().unwrap()]);
    assert!(!o.status.success() && !dir.join("y.safetensors").exists());
    // Features at output stride 8 from the imported checkpoint: [1, 64, 8, 8] for 64 px.
    let image = dir.join("img.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 90])).save(&image).unwrap();
    let npy = dir.join("c5.npy");
    let o = densessl(&[
        "features", "--weights", imported.to_str().unwrap(), "--image", image.to_str().unwrap(),
        "--size", "64", "--output-stride", "8", "--out", npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&npy).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (1, 64, 8, 8)"));
    assert_eq!(bytes.len(), 10 + header_len + 4 * 64 * 8 * 8);
    let out = dir.join("tv.safetensors");
    let o = densessl(&["export", imported.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("wrote 120 tensors"));
    let o = densessl(&["export", imported.to_str().unwrap(), "--out", dir.join("tv.pth").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("safetensors"));
}

#[test]
fn protocol_seeds_predict_and_eval_of_saved_predictions_agree() {
    let dir = temp_dir("protocol");
    let tree = dir.join("tree");
    let o = densessl(&["data", "procedural", "--out", tree.to_str().unwrap(), "--size", "32", "--train", "8", "--val", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ft = dir.join("ft");
    let source = format!("data.source={}", tree.display());
    let mut args = vec!["finetune", "--protocol", "mini", "--seeds", "2", "--out", ft.to_str().unwrap()];
    for s in [
        source.as_str(), "encoder.base_width=8", "head.channels=8", "augment.crop_size=32", "augment.photometric=true",
        "train.steps=2", "train.batch_size=4", "train.eval_batch_size=2", "inference.flip=true",
    ] {
        args.extend(["--set", s]);
    }
    let o = densessl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("over 2 seeds"));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ft.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["seeds"].as_array().unwrap().len(), 2);
    assert!(summary["miou_std"].as_f64().unwrap() >= 0.0);
    let config = std::fs::read_to_string(ft.join("seed-1/config.toml")).unwrap();
    assert!(config.contains("protocol = \"mini\"") && config.contains("seed = 1") && config.contains("photometric = true"), "{config}");
    // The same --out again is refused: a finished result is never overwritten.
    let o = densessl(&args);
    assert!(!o.status.success() && stderr(&o).contains("finished run"), "{}", stderr(&o));

    // predict → PNGs (+ overlays), then eval --pred equals eval --checkpoint.
    let model = ft.join("seed-0/checkpoints/model.safetensors");
    let pred = dir.join("pred");
    let o = densessl(&[
        "predict", "--checkpoint", model.to_str().unwrap(), "--dataset", tree.to_str().unwrap(), "--out", pred.to_str().unwrap(),
        "--overlay", "--flip",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(pred.join("val_000003.png").exists() && pred.join("val_000003_overlay.png").exists());
    let overlay = image::open(pred.join("val_000000_overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (3 * 32, 32));
    let gt = dir.join("gt");
    std::fs::create_dir_all(&gt).unwrap();
    for i in 0..4 {
        let name = format!("val_{i:06}.png");
        std::fs::copy(tree.join("SegmentationClass").join(&name), gt.join(&name)).unwrap();
    }
    let saved = densessl(&["eval", "--pred", pred.to_str().unwrap(), "--gt", gt.to_str().unwrap(), "--num-classes", "6", "--json"]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    let direct = densessl(&["eval", "--checkpoint", model.to_str().unwrap(), "--dataset", tree.to_str().unwrap(), "--flip", "--json"]);
    assert!(direct.status.success(), "{}", stderr(&direct));
    let (a, b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&saved.stdout).unwrap(), serde_json::from_slice(&direct.stdout).unwrap());
    assert_eq!(a, b);
    // A missing prediction is named.
    std::fs::remove_file(pred.join("val_000002.png")).unwrap();
    let o = densessl(&["eval", "--pred", pred.to_str().unwrap(), "--gt", gt.to_str().unwrap(), "--num-classes", "6"]);
    assert!(!o.status.success() && stderr(&o).contains("val_000002.png"), "{}", stderr(&o));
}

/// Writes a tiny grid into `dir` (RandomInit and MoCo v2 rows, a MoCo v2 → DenseCL
/// continuation, two seeds: 8 runs) and returns the experiment file.
fn tiny_experiment(dir: &Path) -> PathBuf {
    let pretrain = |method: &str, extra: &str| {
        let text = format!(
            "[data]\nsource = \"procedural\"\nsize = 32\ntrain = 16\n[encoder]\nbase_width = 4\noutput_stride = 8\n\
             [method]\nname = \"{method}\"\nqueue_size = 64\ndim = 8\n{extra}\n[train]\nbatch_size = 4\nview_size = 32\nlog_every = 1\n"
        );
        std::fs::write(dir.join(format!("{method}.toml")), text).unwrap();
    };
    pretrain("moco-v2", "");
    pretrain("densecl", "");
    std::fs::write(
        dir.join("finetune.toml"),
        "[data]\nsource = \"procedural\"\nsize = 32\ntrain = 8\nval = 4\n[encoder]\nbase_width = 4\noutput_stride = 8\n\
         [head]\nchannels = 8\ndilation = 1\n[train]\nsteps = 3\nbatch_size = 4\neval_batch_size = 4\n",
    )
    .unwrap();
    let experiment = dir.join("tiny.toml");
    let d = dir.display();
    std::fs::write(
        &experiment,
        format!(
            "name = \"tiny\"\nout = \"{d}/out\"\nseeds = 2\n[pretrain]\nconfig = \"{d}/{{method}}.toml\"\n\
             [finetune]\nconfig = \"{d}/finetune.toml\"\n\
             [[grid]]\nmethods = [\"random\", \"moco-v2\"]\nsteps = [2]\nheads = [\"fcn\"]\n\
             [[grid]]\nmethods = [\"densecl\"]\nsteps = [1]\nheads = [\"fcn\"]\ncontinue_from = {{ method = \"moco-v2\", steps = 2 }}\n\
             pretrain_set = [\"optim.encoder_lr_mult=0.1\"]\n"
        ),
    )
    .unwrap();
    experiment
}

/// A tiny grid end to end: RandomInit and MoCo v2 rows, a MoCo v2 → DenseCL continuation,
/// two seeds; then a re-run skips everything, a run killed half-way (no summary.json) is
/// redone alone, and `--emit slurm` writes stages in dependency order.
#[test]
fn experiment_grid_runs_reports_resumes_and_emits_slurm() {
    let dir = temp_dir("experiment");
    let experiment = tiny_experiment(&dir);
    let file = experiment.to_str().unwrap();

    let o = densessl(&["experiment", file, "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(listing.contains("8 runs, 8 to run"), "{listing}");

    let o = densessl(&["experiment", file]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("8 runs trained, 0 already finished"), "{}", stderr(&o));
    let out = dir.join("out");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for label in ["| RandomInit | — | fcn |", "| moco-v2 | 2 | fcn |", "| moco-v2 → densecl | 1 | fcn |"] {
        assert!(md.contains(label), "{label} missing in\n{md}");
    }
    assert!(md.contains("continues moco-v2 (2 steps)") && md.contains("vs MoCo v2"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row["seeds"].as_array().unwrap().len(), 2, "{row}");
        assert!(row["miou_mean"].as_f64().unwrap() >= 0.0);
    }
    assert!(out.join("pretrain_loss.png").exists() && out.join("miou_fcn.png").exists());
    // The continuation started from its parent's encoder.
    let continued: Vec<_> = std::fs::read_dir(out.join("pretrain")).unwrap().map(|e| e.unwrap().path()).collect();
    let child = continued.iter().find(|p| p.to_string_lossy().contains("pt-densecl")).unwrap();
    let manifest = std::fs::read_to_string(child.join("manifest.json")).unwrap();
    assert!(manifest.contains("pt-moco-v2-2-"), "{manifest}");

    // Nothing left to do.
    let o = densessl(&["experiment", file]);
    assert!(stderr(&o).contains("0 runs trained, 8 already finished"), "{}", stderr(&o));
    // A run killed half-way has a directory but no summary.json: only it runs again.
    let killed = std::fs::read_dir(out.join("finetune")).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("densecl")).unwrap();
    std::fs::remove_file(killed.join("summary.json")).unwrap();
    let o = densessl(&["experiment", file]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 runs trained, 7 already finished"), "{}", stderr(&o));

    let slurm = dir.join("slurm");
    let o = densessl(&["experiment", file, "--emit", "slurm", slurm.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stage = |name: &str| std::fs::read_to_string(slurm.join(name)).unwrap();
    assert_eq!(stage("stage-1-pretrain.txt").lines().count(), 1);
    assert!(stage("stage-2-continue.txt").starts_with("pt-densecl-1-"));
    assert_eq!(stage("stage-3-finetune.txt").lines().count(), 6);
    let submit = stage("submit.sh");
    assert!(submit.contains("--array=0-5") && submit.contains("afterok") && submit.contains("collect.sh"), "{submit}");
    assert!(stage("task.sh").contains("--only \"$id\""));
}

/// `--jobs 2` trains the same grid in child processes, parents before children, to the same
/// mIoUs as one run after another; a child that fails is named with its log, no new run starts
/// after it, the run beside it still finishes, and nothing finished is lost.
#[test]
fn experiment_jobs_train_in_children_like_one_by_one() {
    let dir = temp_dir("experiment-jobs");
    let experiment = tiny_experiment(&dir);
    let file = experiment.to_str().unwrap();
    let out = |name: &str| dir.join(name).display().to_string();
    let miou = |name: &str| {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("results.json")).unwrap()).unwrap();
        json["rows"].as_array().unwrap().iter().map(|r| (r["label"].to_string(), r["seeds"].to_string())).collect::<Vec<_>>()
    };

    let o = densessl(&["experiment", file, "--out", &out("serial")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = densessl(&["experiment", file, "--out", &out("jobs"), "--jobs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("8 runs trained, 0 already finished"), "{}", stderr(&o));
    assert_eq!(miou("serial"), miou("jobs"));
    assert_eq!(std::fs::read_dir(dir.join("jobs").join("logs")).unwrap().count(), 8);

    // Break MoCo v2's encoder after its pre-training: the continuation, first in plan order,
    // fails; RandomInit's first fine-tune, started beside it, still finishes.
    let o = densessl(&["experiment", file, "--dry-run", "--out", &out("broken")]);
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let moco = listing.split_whitespace().find(|w| w.starts_with("pt-moco-v2-")).unwrap().to_string();
    let o = densessl(&["experiment", file, "--out", &out("broken"), "--only", &moco]);
    assert!(o.status.success(), "{}", stderr(&o));
    let encoder = dir.join("broken").join("pretrain").join(&moco).join("checkpoints").join("encoder.safetensors");
    std::fs::write(&encoder, b"not a checkpoint").unwrap();
    let o = densessl(&["experiment", file, "--out", &out("broken"), "--jobs", "2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pt-densecl-1-") && stderr(&o).contains("FAILED") && stderr(&o).contains(".log"), "{}", stderr(&o));
    let finished: Vec<String> = std::fs::read_dir(dir.join("broken").join("finetune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("summary.json").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(finished.len() == 1 && finished[0].starts_with("ft-RandomInit"), "{finished:?}");
    assert!(dir.join("broken").join("pretrain").join(&moco).join("summary.json").exists());
}

#[test]
fn bench_json_and_plot_of_two_runs() {
    let o = densessl(&["bench", "train-step", "--base-width", "4", "--batch", "2", "--size", "32", "--steps", "2", "--warmup", "0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let median = result["median_s_per_step"].as_f64().unwrap();
    assert!(median > 0.0 && (result["images_per_s"].as_f64().unwrap() - 2.0 / median).abs() < 1e-6, "{result}");
    assert!(result.get("peak_rss_mb").is_some());

    let dir = temp_dir("plot");
    for (run, slope) in [("a", 1.0), ("b", 2.0)] {
        std::fs::create_dir_all(dir.join(run)).unwrap();
        let lines: String = (1..=20).map(|s| format!("{{\"step\":{s},\"loss\":{}}}\n", 10.0 - slope * 0.1 * s as f64)).collect();
        std::fs::write(dir.join(run).join("metrics.jsonl"), lines).unwrap();
    }
    let png = dir.join("loss.png");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let o = densessl(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "--out", png.to_str().unwrap(), "--size", "320x200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (320, 200));
    let o = densessl(&["plot", a.to_str().unwrap(), "--key", "knn_acc", "--out", png.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("no 'knn_acc'"), "{}", stderr(&o));
}
