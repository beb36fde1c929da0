//! Agents: whatever answers episodes. A model-backed agent lives in the crates that know
//! models; here are the trait and the reference agents used in tests.

use std::collections::HashMap;

use crate::episode::{ChatMessage, Episode, Role, Skill};
use crate::error::TaskError;

/// The conversation so far of one episode, handed to an agent.
#[derive(Debug, Clone, Copy)]
pub struct Conversation<'a> {
    /// The episode's id (agents may ignore it; reference agents use it).
    pub episode_id: &'a str,
    /// The episode's skill (a router may use it).
    pub skill: Skill,
    /// System, user, assistant and observation messages so far; the last is not the agent's.
    pub messages: &'a [ChatMessage],
}

/// Something that writes the next assistant message of a conversation.
pub trait Agent: Sync {
    /// The next assistant message.
    fn respond(&self, conversation: &Conversation<'_>) -> Result<String, TaskError>;

    /// The next assistant message of many conversations at once (evaluation generates in
    /// batches); by default one at a time. Returns one result per conversation, in order.
    fn respond_batch(&self, conversations: &[Conversation<'_>]) -> Vec<Result<String, TaskError>> {
        conversations.iter().map(|c| self.respond(c)).collect()
    }
}

/// Answers every episode with its gold solution (one message per round): proves that a
/// task is solvable by its checker.
#[derive(Debug, Clone, Default)]
pub struct GoldAgent {
    gold: HashMap<String, Vec<String>>,
}

impl GoldAgent {
    /// A gold agent for these episodes.
    pub fn new(episodes: &[Episode]) -> Self {
        Self {
            gold: episodes
                .iter()
                .map(|e| (e.id.clone(), e.gold.clone()))
                .collect(),
        }
    }
}

impl Agent for GoldAgent {
    fn respond(&self, c: &Conversation<'_>) -> Result<String, TaskError> {
        let gold = self
            .gold
            .get(c.episode_id)
            .filter(|g| !g.is_empty())
            .ok_or_else(|| TaskError::Agent(format!("no gold answer for {}", c.episode_id)))?;
        let round = c
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let reply = gold[round.min(gold.len() - 1)].clone();
        if reply.contains(crate::loaders::agentbench::OBSERVATION) {
            // Multi-turn gold that answers with what its previous command printed.
            let last = c
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.trim().to_string())
                .unwrap_or_default();
            return Ok(reply.replace(crate::loaders::agentbench::OBSERVATION, &last));
        }
        Ok(reply)
    }
}

/// Gives the same answer to everything (a wrong answer, in tests).
#[derive(Debug, Clone)]
pub struct ConstantAgent(pub String);

impl Agent for ConstantAgent {
    fn respond(&self, _c: &Conversation<'_>) -> Result<String, TaskError> {
        Ok(self.0.clone())
    }
}
