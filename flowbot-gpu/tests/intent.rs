//! The intent classifier on all-MiniLM-L6-v2: trained from example texts, scored on held-out
//! examples, calibrated, retrained when the examples change, and refusing bad examples by
//! name. Needs `. scripts/torch-env`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
#![allow(clippy::print_stdout)] // the held-out accuracy is the test's report

mod common;

use std::collections::BTreeMap;

use flowbot_core::Classifier;
use flowbot_gpu::{BatchOptions, Batcher, Encoder, Error, IntentClassifier, Options, TrainOptions};

fn classifier() -> IntentClassifier {
    let encoder = Encoder::load(common::minilm_dir(), &Options::cpu()).unwrap();
    IntentClassifier::new(
        Batcher::start(encoder, BatchOptions::default()).unwrap(),
        TrainOptions::default(),
    )
}

/// Ten examples for each of eight intents, as a support bot's rules would declare them.
pub fn examples() -> BTreeMap<String, Vec<String>> {
    let raw: [(&str, [&str; 10]); 8] = [
        (
            "greeting",
            [
                "hi",
                "hello there",
                "good morning",
                "hey, how are you?",
                "hiya",
                "good evening!",
                "hello bot",
                "greetings",
                "hey there, anyone around?",
                "morning!",
            ],
        ),
        (
            "goodbye",
            [
                "bye",
                "see you later",
                "goodbye for now",
                "talk to you tomorrow",
                "I'm off, bye",
                "catch you later",
                "have a nice day, bye",
                "that's all, goodbye",
                "see ya",
                "good night",
            ],
        ),
        (
            "reset_password",
            [
                "I forgot my password",
                "how do I reset my password?",
                "can't log in, password is wrong",
                "reset my password please",
                "I need a new password",
                "my password doesn't work",
                "locked out of my account",
                "change my login password",
                "password recovery",
                "I can't remember my password",
            ],
        ),
        (
            "order_status",
            [
                "where is my order?",
                "has my package shipped?",
                "track my order",
                "when will my parcel arrive?",
                "my delivery is late",
                "order status please",
                "what's the status of order 1234?",
                "is my order on its way?",
                "I haven't received my package",
                "shipping update for my purchase",
            ],
        ),
        (
            "cancel_subscription",
            [
                "cancel my subscription",
                "I want to unsubscribe",
                "stop my membership",
                "how do I cancel my plan?",
                "end my subscription now",
                "please cancel my account plan",
                "I don't want to be billed anymore",
                "terminate my subscription",
                "cancel the monthly plan",
                "opt out of the subscription",
            ],
        ),
        (
            "weather",
            [
                "what's the weather like?",
                "will it rain today?",
                "weather forecast for tomorrow",
                "is it going to be sunny?",
                "how hot is it outside?",
                "do I need an umbrella?",
                "temperature in Paris",
                "is it snowing in Berlin?",
                "weather this weekend",
                "how cold will it be tonight?",
            ],
        ),
        (
            "thanks",
            [
                "thank you",
                "thanks a lot",
                "much appreciated",
                "thanks for the help",
                "great, thank you!",
                "cheers",
                "thank you so much",
                "thx",
                "many thanks",
                "I appreciate it",
            ],
        ),
        (
            "human_agent",
            [
                "I want to talk to a person",
                "connect me to an agent",
                "can I speak to a human?",
                "get me a real person",
                "transfer me to support staff",
                "I need a human operator",
                "let me talk to customer service",
                "is there a live agent?",
                "speak with someone",
                "human please",
            ],
        ),
    ];
    raw.iter()
        .map(|(label, texts)| {
            (
                (*label).to_owned(),
                texts.iter().map(|t| (*t).to_owned()).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_intents_from_examples_and_labels_new_texts() {
    let c = classifier();
    // Before learning it labels nothing (every intent condition is false).
    assert!(c.classify("hello").await.unwrap().is_empty());
    let t = c.train(&examples()).await.unwrap();
    assert_eq!(t.labels.len(), 8);
    assert_eq!((t.examples, t.held_out), (80, 16));
    let accuracy = t.held_out_accuracy.unwrap();
    println!(
        "held-out accuracy {accuracy:.3} on {} examples, temperature {:.2}, embedding {:?}, training {:?}",
        t.held_out, t.temperature, t.embedding, t.training
    );
    assert!(accuracy >= 0.85, "held-out accuracy {accuracy}");
    for (text, want) in [
        ("hello, good afternoon", "greeting"),
        ("I lost my password, help", "reset_password"),
        ("where's my parcel", "order_status"),
        (
            "please end my plan, I no longer want it",
            "cancel_subscription",
        ),
        ("is it raining in London?", "weather"),
        ("can a real human help me", "human_agent"),
    ] {
        let labels = c.classify(text).await.unwrap();
        assert_eq!(labels.len(), 8);
        assert_eq!(labels[0].label, want, "{text}: {labels:?}");
        let sum: f32 = labels.iter().map(|l| l.confidence).sum();
        assert!(sum <= 1.0 + 1e-4, "confidences sum to {sum}");
        assert!(labels[0].confidence > 0.5, "{text}: {labels:?}");
    }
    // Texts unlike every intent get low confidences (the out-of-scope class takes them).
    for text in [
        "what is the tallest building in Asia",
        "my favourite food is lasagne",
        "kjhg lkjh",
    ] {
        let labels = c.classify(text).await.unwrap();
        assert!(labels[0].confidence < 0.5, "{text}: {labels:?}");
    }
    // Retraining with new examples replaces the labels; seen texts are not embedded again.
    let mut fewer = examples();
    fewer.retain(|k, _| k == "greeting" || k == "thanks");
    let t = c.train(&fewer).await.unwrap();
    assert_eq!(t.labels, ["greeting", "thanks"]);
    let labels = c.classify("thank you very much").await.unwrap();
    assert_eq!(labels.len(), 2);
    assert_eq!(labels[0].label, "thanks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_examples_are_refused_by_name_and_keep_the_model() {
    let c = classifier();
    let mut one = BTreeMap::new();
    one.insert("greeting".to_owned(), vec!["hi".to_owned()]);
    let err = c.train(&one).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Settings {
                setting: "examples",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("'greeting'"), "{err}");
    let mut empty = examples();
    empty.insert("silence".to_owned(), vec![]);
    let err = c.train(&empty).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("intent 'silence' has no example texts"),
        "{err}"
    );
    // Through core's trait the error is a model error naming the model.
    let err = c.learn(&one).await.unwrap_err();
    assert!(err.to_string().contains("model"), "{err}");
    assert!(
        c.classify("hi").await.unwrap().is_empty(),
        "nothing was learned"
    );
}
