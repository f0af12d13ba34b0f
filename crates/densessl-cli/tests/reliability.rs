//! Crash safety and bad input, end to end: runs killed with SIGKILL and resumed must equal
//! uninterrupted ones; every bad input gets one clear error and leaves earlier results intact.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Scratch;

/// The binary in deterministic single-threaded mode.
fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_densessl"));
    c.args(args).env("DENSESSL_QUIET", "1").env("RAYON_NUM_THREADS", "1");
    c
}

fn densessl(args: &[&str]) -> Output {
    command(args).output().expect("binary runs")
}

fn spawn(args: &[&str]) -> Child {
    command(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("binary starts")
}

fn temp_dir(name: &str) -> Scratch {
    Scratch::new(&format!("reliability-{name}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `(step, loss)` of every metrics line that has a loss.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| Some((r["step"].as_u64()?, r["loss"].as_f64()?)))
        .collect()
}

/// The tensors of a safetensors file by name (raw bytes); panics on a truncated or
/// malformed file, which is what the crash tests look for.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() >= 8, "{} is truncated", path.display());
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    let mut end = 0;
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let offsets: Vec<usize> = info["data_offsets"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert!(offsets[1] <= data.len(), "{} is truncated at {name}", path.display());
        end = end.max(offsets[1]);
        out.insert(name.clone(), data[offsets[0]..offsets[1]].to_vec());
    }
    assert_eq!(end, data.len(), "{}: data length disagrees with the header", path.display());
    out
}

/// Every checkpoint under `run/checkpoints` is whole; states are complete directories.
fn assert_checkpoints_whole(run: &Path) {
    for entry in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") {
            tensors(&path);
        } else if name.starts_with("state-step") && !name.ends_with(".tmp") {
            assert!(path.join("loop.json").exists(), "{name} lacks loop.json");
        }
    }
}

/// Names of the tensors that differ between two checkpoints (empty when identical).
fn differing(a: &Path, b: &Path) -> Vec<String> {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter().filter(|(name, bytes)| b[*name] != **bytes).map(|(name, _)| name.clone()).collect()
}

fn newest_state(run: &Path) -> Option<usize> {
    std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_string_lossy().strip_prefix("state-step")?.parse().ok())
        .max()
}

/// Starts `args`, waits until a state newer than `after` exists, kills the process with
/// SIGKILL and returns the newest state it had written.
fn kill_after_state(args: &[&str], run: &Path, after: usize) -> usize {
    let mut child = spawn(args);
    let deadline = Instant::now() + Duration::from_secs(300);
    while newest_state(run).is_none_or(|s| s <= after) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(Instant::now() < deadline, "no state after step {after}");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run.join("summary.json").exists(), "killed before the end");
    newest_state(run).unwrap()
}

const PRETRAIN: &[&str] = &[
    "--set", "data.size=32", "--set", "data.train=16", "--set", "train.view_size=32", "--set", "encoder.base_width=4",
    "--set", "train.batch_size=8", "--set", "train.steps=60", "--set", "train.checkpoint_every=10",
    "--set", "train.log_every=5", "--set", "method.queue_size=64",
];

#[test]
fn pretraining_killed_twice_and_resumed_equals_an_uninterrupted_run() {
    let dir = temp_dir("pretrain");
    let (reference, run) = (dir.join("reference"), dir.join("killed"));
    fn with_out(out: &Path) -> Vec<&str> {
        [&["pretrain"], PRETRAIN, &["--out", s(out)]].concat()
    }
    let o = densessl(&with_out(&reference));
    assert!(o.status.success(), "{}", stderr(&o));

    let first = kill_after_state(&with_out(&run), &run, 0);
    assert_checkpoints_whole(&run);
    let second = kill_after_state(&["pretrain", "--resume", s(&run)], &run, first);
    assert!(second > first);
    assert_checkpoints_whole(&run);
    let o = densessl(&["pretrain", "--resume", s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("at step {second}")), "{}", stderr(&o));

    assert_eq!(losses(&reference), losses(&run), "every logged loss is the uninterrupted run's");
    assert_eq!(losses(&run).len(), 12, "no duplicate lines from the replayed steps");
    let encoder = |r: &Path| r.join("checkpoints/encoder.safetensors");
    assert_eq!(differing(&encoder(&reference), &encoder(&run)), Vec::<String>::new(), "the final encoders are identical");
    let summary = |r: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(r.join("summary.json")).unwrap()).unwrap() };
    assert_eq!(summary(&reference)["final_loss"], summary(&run)["final_loss"]);
    // Only the newest two states and step checkpoints are kept.
    let states = std::fs::read_dir(run.join("checkpoints")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("state-")).count();
    assert_eq!(states, 2);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["resumed"].as_array().unwrap().len(), 2);
    // A finished run is not resumed again.
    let o = densessl(&["pretrain", "--resume", s(&run)]);
    assert!(!o.status.success() && stderr(&o).contains("finished run"), "{}", stderr(&o));
}

const FINETUNE: &[&str] = &[
    "--set", "data.size=32", "--set", "data.train=12", "--set", "data.val=4", "--set", "encoder.base_width=4",
    "--set", "head.channels=8", "--set", "train.batch_size=4", "--set", "train.steps=40",
    "--set", "train.checkpoint_every=10", "--set", "train.log_every=5",
];

#[test]
fn fine_tuning_killed_and_resumed_equals_an_uninterrupted_run() {
    let dir = temp_dir("finetune");
    let (reference, run) = (dir.join("reference"), dir.join("killed"));
    fn with_out(out: &Path) -> Vec<&str> {
        [&["finetune"], FINETUNE, &["--out", s(out)]].concat()
    }
    let o = densessl(&with_out(&reference));
    assert!(o.status.success(), "{}", stderr(&o));
    kill_after_state(&with_out(&run), &run, 0);
    assert_checkpoints_whole(&run);
    let o = densessl(&["finetune", "--resume", s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&reference), losses(&run));
    let model = |r: &Path| r.join("checkpoints/model.safetensors");
    assert_eq!(differing(&model(&reference), &model(&run)), Vec::<String>::new(), "the final models are identical");
    let miou = |r: &Path| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(r.join("summary.json")).unwrap()).unwrap()["miou"].clone()
    };
    assert_eq!(miou(&reference), miou(&run));
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_the_last_good_checkpoint() {
    let dir = temp_dir("nonfinite");
    let args = |out: &Path, skip: &str| -> Vec<String> {
        [
            &["pretrain"][..],
            PRETRAIN,
            &["--set", "train.checkpoint_every=1", "--set", "optim.lr=inf", "--set", "schedule.kind=\"constant\""],
            &["--set", &format!("train.skip_nonfinite={skip}"), "--out", s(out)],
        ]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
    };
    let run = dir.join("stop");
    let o = densessl(&args(&run, "0").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("training stopped at step 2") && e.contains("not finite") && e.contains("encoder-step1.safetensors"), "{e}");
    assert!(!run.join("summary.json").exists());
    tensors(&run.join("checkpoints/encoder-step1.safetensors"));
    // Skipping: three bad steps pass, the fourth stops the run.
    let run = dir.join("skip");
    let o = densessl(&args(&run, "3").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("4 such step(s)") && stderr(&o).contains("at step 5"), "{}", stderr(&o));
    let skipped = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().matches("skipped_nonfinite").count();
    assert_eq!(skipped, 4);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_tree(&path, &target) } else { std::fs::copy(&path, &target).map(|_| ()).unwrap() }
    }
}

/// Rewrites a safetensors file without the tensor `drop`.
fn without_tensor(from: &Path, to: &Path, drop: &str) {
    let bytes = std::fs::read(from).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut kept = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, info) in header.as_object().unwrap() {
        if name == drop {
            continue;
        }
        let mut info = info.clone();
        if name != "__metadata__" {
            let offsets: Vec<usize> = info["data_offsets"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let start = data.len();
            data.extend_from_slice(&bytes[8 + n + offsets[0]..8 + n + offsets[1]]);
            info["data_offsets"] = serde_json::json!([start, data.len()]);
        }
        kept.insert(name.clone(), info);
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(kept)).unwrap();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    std::fs::write(to, out).unwrap();
}

/// Each bad input gets one clear error naming the culprit, a non-zero exit, and no output
/// in place of (or on top of) earlier results.
#[test]
fn bad_inputs_fail_with_one_clear_error_and_lose_nothing() {
    let dir = temp_dir("bad");
    let good = dir.join("good");
    let o = densessl(&["data", "procedural", "--out", s(&good), "--size", "32", "--train", "6", "--val", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let finetune = |root: &Path, out: &Path, extra: &[&str]| {
        let source = format!("data.source={}", s(root));
        let mut args = vec!["finetune", "--set", &source, "--set", "encoder.base_width=4", "--set", "head.channels=8"];
        args.extend(["--set", "train.steps=2", "--set", "train.batch_size=2", "--out", s(out)]);
        args.extend(extra);
        densessl(&args)
    };
    // A control: the good tree trains.
    let o = finetune(&good, &dir.join("control"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    type Spoil = Box<dyn Fn(&Path)>;
    let grey = |w: u32, h: u32, label: u8| image::GrayImage::from_pixel(w, h, image::Luma([label]));
    let cases: Vec<(&str, Spoil, &[&str])> = vec![
        ("corrupt-jpeg", Box::new(|r: &Path| std::fs::write(r.join("JPEGImages/train_000001.jpg"), b"not a jpeg at all").unwrap()), &["train_000001.jpg"]),
        (
            "truncated-jpeg",
            Box::new(|r: &Path| {
                let path = r.join("JPEGImages/train_000002.jpg");
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
            }),
            &["train_000002.jpg"],
        ),
        ("corrupt-png", Box::new(|r: &Path| std::fs::write(r.join("SegmentationClass/train_000003.png"), b"\x89PNG\r\n\x1a\n broken").unwrap()), &["train_000003.png"]),
        (
            "mask-of-another-size",
            Box::new(move |r: &Path| grey(16, 32, 0).save(r.join("SegmentationClass/train_000004.png")).unwrap()),
            &["train_000004.png", "mask is"],
        ),
        (
            "label-outside-the-classes",
            Box::new(move |r: &Path| grey(32, 32, 9).save(r.join("SegmentationClass/train_000005.png")).unwrap()),
            &["train_000005.png", "label 9", "6 classes"],
        ),
        (
            "list-entry-without-file",
            Box::new(|r: &Path| {
                let list = r.join("ImageSets/Segmentation/train.txt");
                let text = std::fs::read_to_string(&list).unwrap() + "train_000099\n";
                std::fs::write(list, text).unwrap();
            }),
            &["train_000099"],
        ),
        ("empty-dataset", Box::new(|r: &Path| std::fs::write(r.join("ImageSets/Segmentation/train.txt"), "").unwrap()), &["lists no images"]),
    ];
    for (name, spoil, culprits) in cases {
        let root = dir.join(name);
        copy_tree(&good, &root);
        spoil(&root);
        let out = dir.join(format!("{name}-run"));
        let o = finetune(&root, &out, &[]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{name}: accepted");
        assert!(culprits.iter().all(|c| e.contains(c)), "{name}: {e}");
        assert!(!e.contains("panicked"), "{name}: {e}");
        assert!(!out.exists(), "{name}: a run directory was written");
    }

    // Config: a value of the wrong type names the key.
    let o = finetune(&good, &dir.join("type-run"), &["--set", "train.steps=\"ten\""]);
    assert!(!o.status.success() && stderr(&o).contains("train.steps") && stderr(&o).contains("expected usize"), "{}", stderr(&o));

    // Checkpoints: another architecture, and missing keys; both name the file.
    let pretrained = dir.join("pretrained");
    let o = densessl(&[&["pretrain"][..], PRETRAIN, &["--set", "train.steps=2", "--out", s(&pretrained)]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let encoder = pretrained.join("checkpoints/encoder.safetensors");
    let o = finetune(&good, &dir.join("arch-run"), &["--init", s(&encoder), "--set", "encoder.base_width=8"]);
    assert!(!o.status.success() && stderr(&o).contains("encoder.safetensors"), "{}", stderr(&o));
    let partial = dir.join("partial.safetensors");
    without_tensor(&encoder, &partial, "layer2.0.conv1.weight");
    let o = finetune(&good, &dir.join("partial-run"), &["--init", s(&partial)]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("partial.safetensors") && e.contains("layer2.0.conv1.weight"), "{e}");

    // A run directory that cannot be created (its parent is a file).
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let o = finetune(&good, &blocker.join("run"), &[]);
    assert!(!o.status.success() && stderr(&o).contains("a-file"), "{}", stderr(&o));

    // A finished run is never overwritten.
    let control_summary = std::fs::read(dir.join("control/summary.json")).unwrap();
    let o = finetune(&good, &dir.join("control"), &[]);
    assert!(!o.status.success() && stderr(&o).contains("finished run"), "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.join("control/summary.json")).unwrap(), control_summary);

    // A full disk while saving the step-10 state: the error names the file, the step-5 state
    // and checkpoint stay whole, and the run resumes from them once there is space again.
    let run = dir.join("disk-full");
    let o = command(&[&["pretrain"][..], PRETRAIN, &["--set", "train.steps=20", "--set", "train.checkpoint_every=5", "--out", s(&run)]].concat())
        .env("DENSESSL_SIMULATE_DISK_FULL", "state-step00000010")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("No space left") && e.contains("state-step00000010"), "{e}");
    assert!(!run.join("summary.json").exists());
    assert_eq!(newest_state(&run), Some(5));
    assert_checkpoints_whole(&run);
    let o = densessl(&["pretrain", "--resume", s(&run)]);
    assert!(o.status.success() && run.join("summary.json").exists(), "{}", stderr(&o));
}
