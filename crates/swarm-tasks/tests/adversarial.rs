//! Hostile programs: each must be contained, scored as a failure with a reason, and leave the
//! host as it was. Limits are small so that these stay gentle on a shared 2-core machine.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use swarm_tasks::{
    processes_of_uid, Checker, CodingTask, Episode, Limits, OsCheck, OsTask, Outcome, Sandbox,
    SandboxCommand, Task, Termination,
};

fn limits() -> Limits {
    Limits {
        cpu_seconds: 2,
        wall: Duration::from_secs(3),
        memory_bytes: 256 << 20,
        max_processes: 32,
        max_file_bytes: 1 << 20,
        max_output_bytes: 64 << 10,
        max_open_files: 64,
    }
}

fn checker() -> Checker {
    match Checker::new(limits()) {
        Ok(c) => c,
        Err(e) => panic!("the sandbox must be available for these tests: {e}"),
    }
}

fn os_episode(check: OsCheck) -> Episode {
    Episode {
        id: "adversarial".into(),
        suite: "adversarial".into(),
        prompt: vec![],
        max_rounds: 1,
        task: Task::Os(OsTask {
            writable: vec!["/work".into()],
            workdir: "/work".into(),
            files: vec![],
            setup_script: None,
            check,
        }),
        gold: vec![],
        family: None,
    }
}

/// Runs a hostile shell command as the answer to a task whose expected output only an
/// uncontained attack would produce.
fn shell_attack(cmd: &str, expected_if_escaped: &str) -> Outcome {
    let ep = os_episode(OsCheck::ExactOutput {
        expected: expected_if_escaped.into(),
    });
    let answer = format!("```bash\n{cmd}\n```");
    match checker().play_scripted(&ep, &[answer]) {
        Ok(o) => o,
        Err(e) => panic!("checker error instead of a scored failure: {e}"),
    }
}

/// Runs a hostile Python program against a test it could only pass by escaping.
fn python_attack(program: &str, test: &str) -> Outcome {
    let ep = Episode {
        id: "adversarial-py".into(),
        suite: "adversarial".into(),
        prompt: vec![],
        max_rounds: 1,
        task: Task::Coding(CodingTask {
            entry_point: Some("f".into()),
            stub: None,
            setup: String::new(),
            tests: vec![test.into()],
        }),
        gold: vec![],
        family: None,
    };
    let answer = format!("```python\n{program}\n```");
    match checker().play_scripted(&ep, &[answer]) {
        Ok(o) => o,
        Err(e) => panic!("checker error instead of a scored failure: {e}"),
    }
}

fn assert_failed(o: &Outcome, reason_contains: &str) {
    assert!(!o.passed, "attack was scored as a pass: {o:?}");
    assert_eq!(o.score, 0.0, "{o:?}");
    assert!(
        o.reason.contains(reason_contains),
        "reason {:?} does not mention {reason_contains:?}",
        o.reason
    );
}

/// Runs `cmd` in a raw sandbox and checks that no process of the run's uid is left.
fn raw_run(cmd: &str) -> (swarm_tasks::RunOutput, Option<u32>) {
    let sb = Sandbox::new(limits()).expect("sandbox");
    let scratch = sb.scratch().expect("scratch");
    let c =
        SandboxCommand::in_work_dir(&scratch, vec!["/bin/bash".into(), "-c".into(), cmd.into()])
            .expect("command");
    let out = sb.run(&scratch, &c).expect("run");
    let uid = scratch.uid();
    if let Some(uid) = uid {
        // The PID namespace dies with its init; give the kernel a moment to reap.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !processes_of_uid(uid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            processes_of_uid(uid).is_empty(),
            "processes of the sandbox uid survived: {:?}",
            processes_of_uid(uid)
        );
    }
    (out, uid)
}

#[test]
fn fork_bomb_is_contained() {
    let start = Instant::now();
    let (out, _) = raw_run("f(){ f | f & }; f; sleep 100");
    assert!(!out.success());
    assert!(start.elapsed() < Duration::from_secs(8));
    let o = python_attack(
        "import os\nwhile True:\n    os.fork()\ndef f():\n    return 1",
        "assert f() == 1",
    );
    assert!(!o.passed, "{o:?}");
    assert!(!o.reason.is_empty());
}

#[test]
fn infinite_loop_hits_the_cpu_or_wall_limit() {
    let o = python_attack("def f():\n    while True:\n        pass", "assert f() == 1");
    assert_failed(&o, "limit");
}

#[test]
fn sleeping_forever_hits_the_wall_limit() {
    let start = Instant::now();
    let o = shell_attack("sleep 100000; echo done", "done");
    assert_failed(&o, "wall-time limit");
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[test]
fn background_daemon_does_not_outlive_the_run() {
    // The daemon would write its marker after the run ended; the state check looks for it.
    let ep = os_episode(OsCheck::StateScript {
        script: "sleep 1.5; test -f /work/marker".into(),
    });
    let answer = "```bash\n(setsid nohup sh -c 'sleep 1; echo alive > /work/marker' >/dev/null 2>&1 &)\necho started\n```";
    let o = checker()
        .play_scripted(&ep, &[answer.to_string()])
        .expect("checker");
    assert_failed(&o, "check step 1 failed");
    let (out, _) = raw_run("(setsid nohup sleep 1000 >/dev/null 2>&1 &); echo started");
    assert_eq!(out.stdout_text().trim(), "started");
}

#[test]
fn memory_bomb_is_stopped() {
    let o = python_attack(
        "def f():\n    a = []\n    while True:\n        a.append(' ' * 10**7)",
        "assert f() == 1",
    );
    assert_failed(&o, "MemoryError");
    let o = python_attack(
        "x = bytearray(10**10)\ndef f():\n    return 1",
        "assert f() == 1",
    );
    assert_failed(&o, "MemoryError");
}

#[test]
fn gigabytes_of_output_are_cut_off() {
    let start = Instant::now();
    let o = shell_attack("yes 'gigabytes of output'", "x");
    assert_failed(&o, "output limit");
    assert!(start.elapsed() < Duration::from_secs(8));
    let (out, _) = raw_run("head -c 5000000000 /dev/zero");
    assert_eq!(out.termination, Termination::OutputLimit);
    assert!(out.stdout.len() <= limits().max_output_bytes);
    // A big file hits the file-size limit.
    let o = shell_attack("exec head -c 100000000 /dev/zero > big", "x");
    assert_failed(&o, "file-size limit");
    let (out, _) = raw_run("head -c 100000000 /dev/zero > big; stat -c %s big");
    let size: u64 = out.stdout_text().trim().parse().expect("size");
    assert!(
        size <= limits().max_file_bytes,
        "file of {size} bytes written"
    );
}

#[test]
fn writing_or_deleting_outside_the_scratch_fails() {
    let host = tempfile::tempdir().expect("tempdir");
    let canary = host.path().join("canary.txt");
    std::fs::write(&canary, "still here").expect("canary");
    let cmd = format!(
        "rm -rf / 2>/dev/null; rm -rf ~ 2>/dev/null; rm -rf {dir} 2>/dev/null; \
         echo pwned > /usr/pwned 2>/dev/null; echo pwned > /etc/pwned 2>/dev/null; \
         echo pwned > {dir}/pwned 2>/dev/null; touch /pwned 2>/dev/null; \
         cat /usr/pwned /etc/pwned {dir}/pwned 2>/dev/null",
        dir = host.path().display()
    );
    let o = shell_attack(&cmd, "pwned\npwned\npwned");
    assert_failed(&o, "expected output");
    assert_eq!(
        std::fs::read_to_string(&canary).expect("canary survives"),
        "still here"
    );
    assert!(!PathBuf::from("/usr/pwned").exists());
    assert!(!PathBuf::from("/etc/pwned").exists());
    assert!(!PathBuf::from("/pwned").exists());
    assert!(!host.path().join("pwned").exists());
    assert!(PathBuf::from("/usr/bin/bash").exists() || PathBuf::from("/bin/bash").exists());
}

#[test]
fn files_outside_the_view_cannot_be_read() {
    let host = tempfile::tempdir().expect("tempdir");
    let secret = host.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-42").expect("secret");
    let cmd = format!(
        "cat /etc/shadow {} /root/.bashrc /proc/1/environ 2>/dev/null; ls /root /home 2>/dev/null; true",
        secret.display()
    );
    let o = shell_attack(&cmd, "TOP-SECRET-42");
    assert_failed(&o, "expected output");
    let (out, _) = raw_run(&cmd);
    assert!(!out.stdout_text().contains("TOP-SECRET-42"));
    assert!(!out.stdout_text().contains("root:"));
    let o = python_attack(
        &format!(
            "def f():\n    return open({:?}).read()",
            secret.display().to_string()
        ),
        "assert f() == 'TOP-SECRET-42'",
    );
    assert_failed(&o, "FileNotFoundError");
}

#[test]
fn network_connections_fail() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let program = format!(
        "import socket\ndef f():\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    s.sendall(b'hello')\n    return 'connected'"
    );
    let o = python_attack(&program, "assert f() == 'connected'");
    assert_failed(&o, "Error");
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the sandbox reached the host's loopback: {other:?}"),
    }
    let (out, _) = raw_run("ip link 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: -f1");
    assert_eq!(
        out.stdout_text()
            .trim()
            .lines()
            .filter(|l| !l.contains("lo"))
            .count(),
        0
    );
}

#[test]
fn killing_the_parent_only_ends_the_run() {
    let me = std::process::id();
    let cmd =
        format!("kill -9 {me} 2>/dev/null; kill -9 $PPID 2>/dev/null; kill -9 -1; echo survived");
    let o = shell_attack(&cmd, "parent killed");
    assert!(!o.passed, "{o:?}");
    assert!(!o.reason.is_empty());
    let o = python_attack(
        "import os, signal\ndef f():\n    os.kill(os.getppid(), signal.SIGKILL)\n    os.kill(-1, signal.SIGKILL)\n    return 1",
        "assert f() == 1",
    );
    assert!(!o.passed, "{o:?}");
    assert!(!o.reason.is_empty());
    // Still here: this test process and the checker keep working.
    let o = shell_attack("echo fine", "fine");
    assert!(o.passed, "{o:?}");
}
