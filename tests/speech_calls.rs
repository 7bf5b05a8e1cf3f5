//! Speech end to end with the real imported Whisper model (never a mock), over 127.0.0.1:
//! baresip calls the default 311 flow, presses 1 (English) and 1 (report a problem) as RFC 4733
//! keys, speaks "There is a large pothole in front of one twenty five Main Street" from its
//! aufile microphone, and a case with the right category and address appears in the database,
//! linked from the call's events. A second call presses 2 and keys that case number, and hears
//! its status and department (checked in the event log and in baresip's recording of the call).
//! Needs data/models/ggml-tiny.en.bin (scripts/fetch-model; scripts/test runs it).

mod common;

use std::path::Path;

use civicline::runtime::store::EventRow;
use common::{baresip_call, best_correlation, events, heard_recording, read_wav};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_report_becomes_a_case_and_a_call_back_hears_its_status() {
    let model = common::speech_model();
    let server = common::start_with(|c| {
        c.ivr.flow = root().join("routing-rules/ivr.toml");
        c.ivr.prompts_dir = root().join("prompts");
        c.speech.model = model;
    })
    .await;
    let target = format!("sip:311@{}", server.udp());

    // The microphone: 13 s of silence (greeting and menu cut short by the keys, then the
    // 7.9 s describe-problem prompt and tone), the speech (4.0 s), then silence.
    let dir = tempfile::tempdir().unwrap();
    let speech = read_wav(&root().join("tests/media/speech_pothole.wav"));
    let mic = dir.path().join("mic.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&mic, spec).unwrap();
    for sample in std::iter::repeat_n(0.0, 13 * 8000)
        .chain(speech.iter().copied())
        .chain(std::iter::repeat_n(0.0, 60 * 8000))
    {
        writer.write_sample(sample as i16).unwrap();
    }
    writer.finalize().unwrap();

    // 1 (English) at 2 s, 1 (report) at 4 s; 1 (keep it) at 29 s, after "you reported a
    // pothole" (should the key come early or late, the confirmation keeps the report anyway).
    let (t, m) = (target.clone(), mic.clone());
    let text = tokio::task::spawn_blocking(move || {
        baresip_call(
            t,
            55,
            vec![(2.0, "1"), (4.0, "1"), (29.0, "1")],
            Some(&m),
            None,
        )
    })
    .await
    .unwrap();
    assert!(text.contains("Call established"), "{text}");

    let rows = events(&server).await;
    // Keep what the server recorded (target/test-artefacts/speech_calls/), to listen to when
    // this test fails.
    let artefacts = root().join("target/test-artefacts/speech_calls");
    std::fs::create_dir_all(&artefacts).unwrap();
    for row in rows.iter().filter(|r| r.event.kind == "recording") {
        let detail: serde_json::Value =
            serde_json::from_str(row.event.detail.as_deref().unwrap_or("{}")).unwrap();
        if let Some(path) = detail["path"].as_str().map(Path::new) {
            let _ = std::fs::copy(path, artefacts.join(path.file_name().unwrap()));
        }
    }
    let kinds =
        |kind: &str| -> Vec<&EventRow> { rows.iter().filter(|r| r.event.kind == kind).collect() };
    let transcript = kinds("transcript");
    assert_eq!(
        transcript.first().and_then(|r| r.event.reason.as_deref()),
        Some("understood"),
        "{transcript:?}"
    );
    let created = kinds("case_created");
    let created = created
        .first()
        .unwrap_or_else(|| panic!("no case: {rows:#?}"));
    let detail: serde_json::Value =
        serde_json::from_str(created.event.detail.as_deref().unwrap()).unwrap();
    let number = detail["case_number"].as_str().unwrap().to_string();
    let case = server
        .server
        .store
        .find_case(&number)
        .await
        .unwrap()
        .expect("the case is stored");
    assert_eq!(case.category.as_deref(), Some("pothole"), "{case:?}");
    assert_eq!(case.department.as_deref(), Some("Streets & Sanitation"));
    assert_eq!(case.address.as_deref(), Some("125 Main Street"), "{case:?}");
    assert!(case.transcript.is_some());
    // Linked from the call's events: same call, and the recording the events name.
    assert_eq!(
        case.call_ref.as_deref(),
        Some(created.event.call_ref.as_str())
    );
    let recording = kinds("recording");
    let recording: serde_json::Value =
        serde_json::from_str(recording[0].event.detail.as_deref().unwrap()).unwrap();
    assert_eq!(case.audio_path.as_deref(), recording["path"].as_str());

    // The call back: 1 (English), 2 (case status), the number and #.
    let heard = dir.path().join("heard");
    let digits: &'static str = Box::leak(format!("{number}#").into_boxed_str());
    let (t, h) = (target.clone(), heard.clone());
    let text = tokio::task::spawn_blocking(move || {
        baresip_call(
            t,
            24,
            vec![(2.0, "1"), (4.0, "2"), (6.0, digits)],
            None,
            Some(&h),
        )
    })
    .await
    .unwrap();
    assert!(text.contains("Call established"), "{text}");
    let rows = events(&server).await;
    let collected = rows
        .iter()
        .find(|r| r.event.reason.as_deref() == Some("case_number:collected"))
        .expect("the number was keyed");
    assert_eq!(
        collected.event.detail.as_deref(),
        Some(format!("{{\"digits\":\"{number}\"}}").as_str())
    );
    let told = rows
        .iter()
        .filter(|r| r.event.kind == "prompt" && r.event.call_ref == collected.event.call_ref)
        .filter_map(|r| r.event.detail.clone())
        .find(|d| d.contains("case_status"))
        .expect("the status was said");
    assert!(
        told.contains("case_status_open") && told.contains("department_streets_sanitation"),
        "{told}"
    );
    // And the caller really heard it: the status prompt is in baresip's recording.
    let heard_audio = heard_recording(&heard);
    let status = read_wav(&root().join("prompts/en/case_status_open.wav"));
    let excerpt = &status[status.len() / 4..status.len() / 4 + 4000];
    // The status comes after the keys (about 7 s in): search from 5 s on.
    let (score, lag) = best_correlation(excerpt, &heard_audio, 40_000..heard_audio.len());
    assert!(
        score > 0.9,
        "status heard: correlation {score:.3} at lag {lag}"
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}
