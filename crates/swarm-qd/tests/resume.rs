//! Stopping after generation n and resuming from the state file gives exactly the run that never
//! stopped: same archives, same lineage, same metrics, same random numbers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use swarm_qd::{
    sphere, sphere_config, BehaviourDim, Child, CycleQd, CycleQdConfig, EliteFormula, MapElites,
    ParentSampler, QdState, Ticket,
};

type Genome = Vec<f64>;

/// A toy "model": a 4-vector; crossover is a weighted mean of the parents, mutation Gaussian,
/// both driven by the ticket's seed only.
fn make_child(t: &Ticket<Genome>) -> Child<Genome> {
    let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
    let w: f64 = rng.gen();
    let (a, b) = (&t.parents[0].genome, &t.parents[t.parents.len() - 1].genome);
    let genome: Genome = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let z: f64 = StandardNormal.sample(&mut rng);
            w * x + (1.0 - w) * y + 0.1 * z
        })
        .collect();
    // Three skills, each a bounded function of the genome.
    let squash = |v: f64| 1.0 / (1.0 + (-v).exp());
    let scores = vec![
        squash(genome[0] - 0.3 * genome[1]),
        squash(genome[1] + genome[2] * genome[3]),
        squash(genome[2] - genome[0] * 0.5 + genome[3]),
    ];
    Child::new(genome, scores).with_param("w", w)
}

fn fresh(sampler: ParentSampler, seed: u64) -> CycleQd<Genome> {
    let skills = (0..3)
        .map(|i| BehaviourDim::new(format!("skill{i}"), 0.0, 1.0, 8))
        .collect();
    let mut config = CycleQdConfig::new(skills);
    config.sampler = sampler;
    config.seed = seed;
    config.qd_score_offset = -1.0;
    let mut qd = CycleQd::new(config).expect("valid config");
    for e in 0..3 {
        let mut g = vec![0.0; 4];
        g[e] = 2.0;
        let t = Ticket {
            id: 0,
            generation: 0,
            quality_skill: 0,
            parents: vec![swarm_qd::Parent {
                id: 0,
                genome: g,
                scores: vec![],
            }],
            seed: e as u64,
        };
        let child = make_child(&t);
        qd.insert_initial(child.genome, child.scores)
            .expect("valid scores");
    }
    qd
}

/// Steady state with `in_flight` tickets outstanding; results come back out of order (the
/// ticket told is chosen by a rule that depends only on the scheduler's own state, so that a
/// resumed driver makes the same choices).
fn drive(qd: &mut CycleQd<Genome>, until_generation: u64, in_flight: usize) {
    while qd.generations_done() < until_generation {
        let missing = in_flight.saturating_sub(qd.outstanding().count());
        if missing > 0 {
            qd.ask(missing).expect("archives are seeded");
        }
        let pending: Vec<&Ticket<Genome>> = qd.outstanding().collect();
        let pick = (qd.children_told() as usize * 7 + 3) % pending.len();
        let ticket = pending[pick].clone();
        qd.tell(ticket.id, make_child(&ticket))
            .expect("valid child");
    }
}

fn json<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_string(x).expect("serialisable")
}

#[test]
fn cycle_qd_stop_and_resume_equals_uninterrupted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (sampler, in_flight) in [
        (ParentSampler::default(), 1),
        (ParentSampler::default(), 4),
        (
            ParentSampler::Elite {
                formula: EliteFormula::released_code(),
            },
            3,
        ),
        (ParentSampler::Uniform, 2),
    ] {
        let mut straight = fresh(sampler, 42);
        drive(&mut straight, 60, in_flight);

        let mut first = fresh(sampler, 42);
        drive(&mut first, 23, in_flight);
        let path = dir.path().join("run.state");
        first.save(&path)?;
        drop(first);
        let mut resumed = CycleQd::<Genome>::load(&path)?;
        assert_eq!(resumed.generations_done(), 23);
        drive(&mut resumed, 60, in_flight);

        assert_eq!(
            json(&resumed),
            json(&straight),
            "{sampler:?}, {in_flight} in flight"
        );
        // And the run did something: children entered the archives beyond the experts.
        assert!(straight
            .archives()
            .iter()
            .any(|a| a.elites().iter().any(|e| e.meta.generation > 30)));
        assert_eq!(straight.history().records.len(), 61);
        assert!(!straight.history().to_csv().is_empty());
    }
    Ok(())
}

#[test]
fn another_seed_is_a_different_run() {
    // Guards the test above against comparing two things that cannot differ.
    let mut a = fresh(ParentSampler::default(), 42);
    drive(&mut a, 30, 2);
    let mut b = fresh(ParentSampler::default(), 43);
    drive(&mut b, 30, 2);
    assert_ne!(json(&a.archives()), json(&b.archives()));
}

#[test]
fn map_elites_stop_and_resume_equals_uninterrupted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = sphere_config(10, 7);
    config.batch_size = 32;
    let mut straight = MapElites::new(config.clone())?;
    for _ in 0..60 {
        straight.step(sphere)?;
    }
    let mut first = MapElites::new(config)?;
    for _ in 0..25 {
        first.step(sphere)?;
    }
    let path = dir.path().join("me.state");
    first.save(&path)?;
    let mut resumed = MapElites::load(&path)?;
    for _ in 25..60 {
        resumed.step(sphere)?;
    }
    assert_eq!(json(&resumed), json(&straight));
    assert!(straight.archive().len() > 20);
    // A MAP-Elites state is not a CycleQD state.
    assert!(CycleQd::<Genome>::load(&path).is_err());
    Ok(())
}
