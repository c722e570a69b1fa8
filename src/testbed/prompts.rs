//! The testbed's prompts: a seeded generator of everyday instructions whose intent can be checked.
//!
//! Every prompt is built from a [`Spec`]: a topic (from [`TOPICS`], each with a one-sentence
//! description and six topic words), a task ([`Task`]: explain, list N items, describe, give advice,
//! short story, compare with a second thing), 1-2 required words from the topic's words, a word
//! limit and an optional answer format ([`Format`]). The prompt text is one of a few English templates
//! for that spec; the spec travels with the prompt as metadata (JSONL `{"id", "prompt", "spec"}`), so
//! that the gold reward (`super::gold`) can check the answer against it.
//!
//! Splits are disjoint by construction: a spec's canonical key ([`Spec::key`], which leaves out the
//! template wording) is hashed with FNV-1a-64, a stable hash, and the hash alone (not the seed) decides
//! whether the spec belongs to the train or the test split (`TEST_PERMILLE` / 1000 of the keys go
//! to test). Within a split, `generate_split` draws specs with a seeded ChaCha8 stream, keeps those
//! of its split and drops repeated keys. So no spec, and no prompt text (the text names every part of
//! its spec), can appear in both splits, whatever the seeds.
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::Path;

/// One built-in topic: what it is called in a prompt, a description (the reference text for the
/// gold's relevance), six topic words (required words are drawn from them), and a second thing to
/// compare it with.
#[derive(Debug, Clone, Copy)]
pub struct Topic {
    pub name: &'static str,
    pub description: &'static str,
    pub words: [&'static str; 6],
    pub versus: &'static str,
}

const fn t(name: &'static str, description: &'static str, words: [&'static str; 6], versus: &'static str) -> Topic {
    Topic { name, description, words, versus }
}

/// 90 everyday topics that a small instruction model can write about.
pub const TOPICS: &[Topic] = &[
    t("coffee", "Coffee is a hot drink brewed from roasted coffee beans, often drunk in the morning for its taste and caffeine.", ["beans", "caffeine", "brew", "cup", "roast", "morning"], "tea"),
    t("tea", "Tea is a drink made by steeping dried tea leaves in hot water, served plain, with milk or as herbal infusions.", ["leaves", "kettle", "cup", "green", "steep", "herbal"], "hot chocolate"),
    t("baking bread", "Baking bread at home means mixing flour, water, yeast and salt into a dough, kneading it, letting it rise and baking it in an oven.", ["flour", "yeast", "dough", "oven", "knead", "crust"], "buying bread from a shop"),
    t("gardening", "Gardening is growing flowers, vegetables and other plants in a garden, with soil, seeds, water, sunlight and care.", ["soil", "seeds", "water", "plants", "sunlight", "weeds"], "keeping houseplants"),
    t("dogs", "Dogs are loyal pets that need food, daily walks, training, play and care from their owners.", ["walk", "bark", "leash", "loyal", "puppy", "training"], "cats"),
    t("cats", "Cats are independent pets with soft fur and whiskers that purr, climb, play and need food and a litter box.", ["purr", "whiskers", "independent", "litter", "kitten", "claws"], "rabbits"),
    t("cycling", "Cycling is riding a bicycle for transport, exercise or fun, pedalling on roads or trails while wearing a helmet.", ["bike", "helmet", "pedal", "wheels", "ride", "exercise"], "walking"),
    t("running", "Running is a simple form of exercise for fitness and health that needs good shoes, steady breathing and a comfortable pace.", ["shoes", "pace", "heart", "breathing", "distance", "stretch"], "swimming"),
    t("swimming", "Swimming is moving through water using arm and leg strokes, a sport and an exercise done in pools, lakes or the sea.", ["pool", "strokes", "water", "goggles", "lessons", "breathe"], "yoga"),
    t("sleep", "Sleep is the nightly rest that the body and mind need to recover, with regular hours in a quiet, dark bedroom.", ["rest", "bed", "dreams", "hours", "night", "tired"], "staying up late"),
    t("rain", "Rain is water that falls from clouds in drops, watering plants, filling rivers and sending people under umbrellas.", ["clouds", "water", "umbrella", "wet", "drops", "storm"], "snow"),
    t("snow", "Snow is frozen water that falls as white flakes in cold winter weather, covering the ground for sledding and snowmen.", ["cold", "winter", "flakes", "white", "ice", "sled"], "sunshine"),
    t("the moon", "The moon is Earth's natural satellite, which orbits the planet, shines at night with reflected sunlight, shows phases and moves the tides.", ["night", "orbit", "craters", "light", "phases", "tides"], "the sun"),
    t("the ocean", "The ocean is the vast body of salt water covering most of the Earth, with waves, tides, beaches and countless fish.", ["waves", "salt", "fish", "tide", "deep", "beach"], "a lake"),
    t("recycling", "Recycling is sorting waste such as plastic, paper and glass into bins so that the materials can be made into new things.", ["plastic", "paper", "bins", "waste", "reuse", "glass"], "throwing things away"),
    t("saving money", "Saving money means spending less than you earn, keeping a budget and putting money in a bank for future goals.", ["budget", "bank", "spend", "savings", "income", "goals"], "borrowing money"),
    t("cooking pasta", "Cooking pasta means boiling noodles in salted water for a few minutes and serving them with a sauce.", ["boil", "water", "salt", "sauce", "noodles", "minutes"], "cooking rice"),
    t("breakfast", "Breakfast is the first meal of the day, such as eggs, toast, cereal or fruit, which gives energy for the morning.", ["eggs", "toast", "cereal", "morning", "energy", "fruit"], "dinner"),
    t("trees", "Trees are tall plants with roots, a wooden trunk, branches and leaves that give shade, wood and oxygen.", ["leaves", "roots", "branches", "shade", "oxygen", "wood"], "bushes"),
    t("bees", "Bees are insects that live in hives, collect pollen and nectar from flowers and make honey.", ["honey", "flowers", "hive", "pollen", "queen", "buzz"], "wasps"),
    t("libraries", "Libraries are quiet public places where people borrow books, read, study and get help from librarians.", ["books", "borrow", "quiet", "reading", "shelves", "librarian"], "bookshops"),
    t("reading books", "Reading books is a hobby of following stories and ideas written by an author, page by page and chapter by chapter.", ["pages", "story", "author", "imagination", "chapter", "library"], "watching films"),
    t("learning a new language", "Learning a new language means studying its words and grammar and practising speaking until you become fluent.", ["words", "practice", "grammar", "speak", "vocabulary", "fluent"], "learning to play an instrument"),
    t("playing the guitar", "Playing the guitar means pressing strings with the fingers of one hand and strumming chords with the other to play songs.", ["strings", "chords", "fingers", "practice", "songs", "tune"], "playing the piano"),
    t("photography", "Photography is taking pictures with a camera, using light, focus and the lens to capture a scene.", ["camera", "light", "lens", "picture", "focus", "shutter"], "painting"),
    t("camping", "Camping is spending nights outdoors in a tent, cooking over a fire and sleeping under the stars in a forest or field.", ["tent", "fire", "forest", "sleeping", "outdoors", "stars"], "staying in a hotel"),
    t("hiking", "Hiking is walking long distances on trails through nature and mountains, with good boots, water and a map.", ["trail", "boots", "mountains", "water", "map", "views"], "running"),
    t("the weather forecast", "The weather forecast predicts tomorrow's temperature, rain, wind and sunshine from measurements and computer models.", ["temperature", "rain", "wind", "sunny", "clouds", "prediction"], "looking out of the window"),
    t("washing dishes", "Washing dishes is cleaning plates, cups and pans in a sink with hot water, soap and a sponge.", ["soap", "sink", "plates", "water", "sponge", "clean"], "using a dishwasher"),
    t("brushing teeth", "Brushing teeth means cleaning them twice a day with a toothbrush and toothpaste for two minutes to prevent cavities.", ["toothbrush", "toothpaste", "minutes", "gums", "floss", "cavities"], "chewing gum"),
    t("drinking water", "Drinking enough water every day keeps the body hydrated and healthy and stops thirst.", ["hydrated", "thirst", "glass", "body", "daily", "healthy"], "drinking soda"),
    t("vegetables", "Vegetables such as carrots, spinach and broccoli are healthy plant foods full of vitamins and fiber.", ["carrots", "vitamins", "healthy", "fresh", "salad", "fiber"], "fruit"),
    t("apples", "Apples are sweet, crunchy fruits that grow on trees in orchards and come in red, green and yellow kinds.", ["fruit", "tree", "sweet", "red", "crunchy", "orchard"], "oranges"),
    t("chocolate", "Chocolate is a sweet food made from cocoa beans, milk and sugar, sold as bars that melt in the mouth.", ["cocoa", "sweet", "milk", "dark", "melt", "sugar"], "candy"),
    t("pizza", "Pizza is a flat baked dough topped with tomato sauce, cheese and other toppings, cut into slices.", ["cheese", "dough", "tomato", "oven", "slice", "toppings"], "burgers"),
    t("birthdays", "Birthdays celebrate the day someone was born, often with a cake and candles, a party, friends and gifts.", ["cake", "party", "candles", "gifts", "friends", "celebrate"], "the new year"),
    t("friendship", "Friendship is a close relationship between people who trust, support and spend time with each other.", ["trust", "friends", "share", "support", "kindness", "time"], "family"),
    t("public transport", "Public transport is shared travel by bus, train or tram, with tickets, stations and timetables in a city.", ["bus", "train", "ticket", "station", "city", "travel"], "driving a car"),
    t("electric cars", "Electric cars run on a battery-powered motor, are charged with electricity and have no exhaust emissions.", ["battery", "charging", "electricity", "emissions", "range", "motor"], "petrol cars"),
    t("smartphones", "Smartphones are pocket computers with a touch screen, a camera and apps, used for calls, messages and the internet.", ["apps", "screen", "battery", "camera", "calls", "internet"], "laptops"),
    t("the internet", "The internet is a worldwide network connecting computers, used to search for information, visit websites and talk online.", ["websites", "connect", "information", "online", "network", "search"], "television"),
    t("email", "Email is a way to send written messages over the internet to an address, with replies and attachments in an inbox.", ["inbox", "message", "send", "address", "reply", "attachment"], "letters"),
    t("video games", "Video games are games played on a screen with a controller or keyboard, where players complete levels and challenges for fun.", ["play", "players", "levels", "controller", "screen", "fun"], "board games"),
    t("board games", "Board games are games played around a table with a board, pieces, dice or cards, taking turns by the rules.", ["dice", "cards", "players", "rules", "turns", "board"], "puzzles"),
    t("football", "Football, or soccer, is a team sport in which players kick a ball and try to score goals in a match.", ["ball", "goal", "team", "players", "kick", "match"], "basketball"),
    t("chess", "Chess is a strategy board game for two players who move pieces such as the king and queen to reach checkmate.", ["king", "board", "pieces", "moves", "checkmate", "strategy"], "checkers"),
    t("music", "Music is sound organised into songs with rhythm and melody, played on instruments or sung, and listened to for joy.", ["songs", "rhythm", "melody", "listen", "instruments", "sound"], "podcasts"),
    t("painting", "Painting is making pictures with a brush and paint in many colors on canvas or paper.", ["brush", "colors", "canvas", "paint", "artist", "picture"], "drawing"),
    t("volcanoes", "Volcanoes are mountains where hot magma from inside the Earth erupts as lava and ash.", ["lava", "eruption", "mountain", "ash", "magma", "heat"], "earthquakes"),
    t("the water cycle", "The water cycle is how water evaporates from oceans, forms clouds, falls as rain and flows back through rivers.", ["evaporation", "clouds", "rain", "rivers", "vapor", "ocean"], "the seasons"),
    t("the seasons", "The four seasons, spring, summer, autumn and winter, bring changes in weather and daylight through the year.", ["spring", "summer", "autumn", "winter", "weather", "year"], "day and night"),
    t("rainbows", "Rainbows are arcs of colors in the sky that appear when sunlight shines through raindrops.", ["colors", "light", "rain", "sun", "sky", "arc"], "sunsets"),
    t("stars", "Stars are huge balls of hot gas far away in space that shine as bright points of light in the night sky.", ["night", "sky", "light", "space", "shine", "bright"], "planets"),
    t("the sun", "The sun is the star at the center of our solar system, giving the Earth light, heat and energy every day.", ["light", "heat", "star", "energy", "sky", "day"], "the moon"),
    t("houseplants", "Houseplants are plants kept indoors in pots, which need water, light through a window and good soil.", ["pots", "water", "light", "leaves", "soil", "window"], "gardening"),
    t("moving house", "Moving house means packing belongings into boxes, carrying furniture and settling into a new home and neighborhood.", ["boxes", "pack", "new", "home", "furniture", "neighbors"], "renovating a house"),
    t("cleaning a room", "Cleaning a room means tidying clothes and things away, dusting, vacuuming the floor and keeping it organized.", ["tidy", "dust", "vacuum", "clothes", "floor", "organized"], "living in a messy room"),
    t("time management", "Time management is planning how to spend your time, with a schedule, priorities and deadlines for your tasks.", ["schedule", "tasks", "deadlines", "plan", "priorities", "focus"], "multitasking"),
    t("exercise", "Regular exercise such as walking, sports or workouts keeps the heart, muscles and mind healthy and strong.", ["muscles", "health", "energy", "workout", "heart", "strong"], "resting"),
    t("yoga", "Yoga is a practice of stretching poses, controlled breathing and balance, usually done on a mat, that calms the body and mind.", ["stretch", "breathing", "poses", "mat", "calm", "balance"], "pilates"),
    t("meditation", "Meditation is sitting quietly and focusing the mind, often on slow breathing, to feel calm and reduce stress.", ["breathing", "calm", "mind", "focus", "quiet", "stress"], "napping"),
    t("making friends at school", "Making friends at school means talking to classmates, sharing, playing games and eating lunch together kindly.", ["classmates", "talk", "share", "kind", "games", "lunch"], "making friends at work"),
    t("homework", "Homework is schoolwork that a teacher gives students to do at home, to study and practise what they learned.", ["school", "teacher", "study", "practice", "time", "questions"], "group projects"),
    t("writing a letter", "Writing a letter means putting words on paper with a pen, starting with Dear, and sending it in an envelope with a stamp.", ["paper", "pen", "dear", "envelope", "stamp", "words"], "sending a text message"),
    t("museums", "Museums are buildings where people visit exhibits of art, history and science objects such as paintings and fossils.", ["art", "history", "exhibits", "visit", "paintings", "objects"], "zoos"),
    t("zoos", "Zoos are parks where animals such as lions and elephants live in enclosures, cared for by keepers and visited by people.", ["animals", "keepers", "visit", "lions", "enclosure", "conservation"], "aquariums"),
    t("birds", "Birds are animals with feathers and wings that lay eggs in nests, and most of them fly and sing.", ["feathers", "wings", "nest", "eggs", "fly", "song"], "bats"),
    t("butterflies", "Butterflies are insects with colorful wings that grow from a caterpillar inside a cocoon and visit flowers.", ["wings", "caterpillar", "flowers", "colors", "cocoon", "fly"], "moths"),
    t("fishing", "Fishing is catching fish with a rod, a hook and bait at a lake, river or the sea, which takes patience.", ["rod", "hook", "lake", "fish", "bait", "patience"], "boating"),
    t("picnics", "A picnic is eating a meal outdoors, such as sandwiches from a basket on a blanket in a park with friends.", ["blanket", "sandwiches", "park", "basket", "sun", "friends"], "eating at a restaurant"),
    t("umbrellas", "Umbrellas are folding covers on a handle that people open and carry to stay dry in the rain.", ["rain", "dry", "handle", "open", "wind", "carry"], "raincoats"),
    t("first aid", "First aid is the help given to an injured person in an emergency, like cleaning a wound and putting on a bandage from a kit.", ["bandage", "wound", "help", "emergency", "kit", "clean"], "calling a doctor"),
    t("fire safety", "Fire safety means preventing fires and knowing what to do in one: smoke alarms, extinguishers and a calm escape through an exit.", ["smoke", "alarm", "exit", "escape", "extinguisher", "calm"], "water safety"),
    t("healthy eating", "Healthy eating means balanced meals with vegetables, fruit and protein, and little sugar.", ["vegetables", "balanced", "sugar", "fruit", "meals", "protein"], "dieting"),
    t("grocery shopping", "Grocery shopping is buying food at a store with a list and a cart while watching prices and a budget.", ["list", "store", "food", "cart", "prices", "budget"], "online shopping"),
    t("beach holidays", "A beach holiday is a vacation by the sea, swimming in the waves, lying on the sand in the sun with sunscreen and a towel.", ["sand", "sun", "swim", "waves", "sunscreen", "towel"], "mountain holidays"),
    t("trains", "Trains are vehicles that run on tracks, pulled by an engine, carrying passengers and goods between stations.", ["tracks", "station", "engine", "passengers", "ticket", "travel"], "airplanes"),
    t("airplanes", "Airplanes are flying machines with wings and engines that carry passengers between airports, steered by a pilot.", ["wings", "pilot", "airport", "fly", "passengers", "engines"], "trains"),
    t("robots", "Robots are machines with sensors and a program that move and do tasks, for example in factories.", ["machines", "sensors", "program", "tasks", "factory", "move"], "computers"),
    t("computers", "Computers are machines with a screen and keyboard that run programs, store data in memory and connect to the internet.", ["keyboard", "screen", "programs", "data", "memory", "internet"], "smartphones"),
    t("clocks", "Clocks are devices that show the time in hours and minutes with hands or digits, and some ring an alarm.", ["time", "hands", "hours", "minutes", "tick", "alarm"], "calendars"),
    t("kindness", "Kindness is being friendly, gentle and caring to others, helping them and saying thank you.", ["help", "smile", "care", "others", "gentle", "thank"], "honesty"),
    t("honesty", "Honesty is telling the truth and not lying, which builds trust and respect between people.", ["truth", "trust", "lie", "honest", "respect", "open"], "kindness"),
    t("weekends", "Weekends are Saturday and Sunday, the days off work or school for rest, fun and time with family.", ["rest", "relax", "saturday", "sunday", "family", "fun"], "weekdays"),
    t("doing laundry", "Doing laundry is washing dirty clothes in a machine with detergent, then drying and folding them.", ["clothes", "wash", "machine", "detergent", "dry", "fold"], "dry cleaning"),
    t("candles", "Candles are sticks of wax with a wick that burns with a small flame to give light and sometimes a nice smell.", ["wax", "flame", "wick", "light", "smell", "melt"], "lamps"),
    t("rivers", "Rivers are streams of fresh water that flow from hills to the sea between two banks, home to fish and crossed by bridges.", ["water", "flow", "fish", "bridge", "banks", "sea"], "lakes"),
    t("mountains", "Mountains are very high, rocky parts of the land with peaks, often covered in snow, that people climb.", ["peak", "climb", "snow", "rocks", "high", "valley"], "hills"),
    t("deserts", "Deserts are very dry, hot lands of sand and dunes where little rain falls and cactus plants and camels live.", ["sand", "hot", "dry", "cactus", "camel", "dunes"], "forests"),
    t("forests", "Forests are large areas covered with trees, full of animals, green leaves, shade and wood.", ["trees", "animals", "leaves", "shade", "wood", "green"], "deserts"),
];

/// Which part of the prompts a spec belongs to (decided by the spec's key alone: [`split_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Test,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// What the prompt asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    Explain,
    /// List `n` items (always with the format `Bullets { n }`).
    List {
        n: usize,
    },
    Describe,
    Advice,
    Story,
    /// Compare the topic with `other`.
    Compare {
        other: String,
    },
}

/// How the answer must be laid out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Format {
    /// A bullet (or numbered) list of exactly `n` items, one per line.
    Bullets { n: usize },
    /// One paragraph: no blank lines, no bullets.
    Paragraph,
    /// One sentence.
    Sentence,
}

/// The checkable intent of a prompt: what the gold reward scores the answer against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Topic name as it appears in the prompt (one of [`TOPICS`] for generated prompts).
    pub topic: String,
    /// What the topic is: the reference text of the gold's relevance component.
    pub description: String,
    pub task: Task,
    /// Words the answer must contain (case-insensitive; simple inflections count, see `gold`).
    pub required_words: Vec<String>,
    /// The answer must have at most this many words.
    pub max_words: usize,
    /// Layout the answer must follow; `None`: free.
    pub format: Option<Format>,
}

impl Spec {
    /// The canonical key: topic, task, required words (sorted), limit, format; the template wording
    /// is not part of it. Splits and de-duplication are decided on this key.
    pub fn key(&self) -> String {
        let task = match &self.task {
            Task::Explain => "explain".to_string(),
            Task::List { n } => format!("list{n}"),
            Task::Describe => "describe".to_string(),
            Task::Advice => "advice".to_string(),
            Task::Story => "story".to_string(),
            Task::Compare { other } => format!("compare:{}", other.to_lowercase()),
        };
        let mut words: Vec<String> = self.required_words.iter().map(|w| w.to_lowercase()).collect();
        words.sort();
        let format = match &self.format {
            None => "free".to_string(),
            Some(Format::Bullets { n }) => format!("bullets{n}"),
            Some(Format::Paragraph) => "paragraph".to_string(),
            Some(Format::Sentence) => "sentence".to_string(),
        };
        format!("{}|{}|{}|{}|{}", self.topic.to_lowercase(), task, words.join(","), self.max_words, format)
    }

    /// The text the gold's relevance compares the answer with: the description, plus the second
    /// thing for a comparison.
    pub fn reference_text(&self) -> String {
        match &self.task {
            Task::Compare { other } => format!("{} Compared with {}.", self.description, other),
            _ => self.description.clone(),
        }
    }
}

/// One prompt: an id, the text given to the policy, and its spec (metadata for the gold only).
/// JSON: `{"id": .., "prompt": .., "spec": {..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestbedPrompt {
    pub id: String,
    #[serde(rename = "prompt")]
    pub text: String,
    pub spec: Spec,
}

impl TestbedPrompt {
    /// One JSON object (one JSONL line, no newline).
    pub fn to_json(&self) -> String {
        // Serialising plain strings, integers and enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one JSON object as written by [`TestbedPrompt::to_json`].
    pub fn from_json(line: &str) -> Result<Self> {
        serde_json::from_str(line).map_err(|e| Error::Input(format!("testbed prompt: {e}")))
    }
}

/// Writes prompts as JSONL, one `to_json` object per line.
pub fn write_jsonl(path: &Path, prompts: &[TestbedPrompt]) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    for p in prompts {
        writeln!(w, "{}", p.to_json()).map_err(|e| Error::io(path, e))?;
    }
    w.flush().map_err(|e| Error::io(path, e))
}

/// Reads prompts from JSONL (blank lines skipped); a bad line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<TestbedPrompt>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let p = serde_json::from_str(&line).map_err(|e| Error::parse(path, format!("line {}: {e}", i + 1)))?;
        out.push(p);
    }
    Ok(out)
}

/// Per mille of spec keys that go to the test split.
pub const TEST_PERMILLE: u64 = 200;

/// The most prompts one `generate_split` call makes. The key space holds 90 topics x 181 (task,
/// format, limit) combinations x 21 required-word sets = 342,090 keys, about 68k of them in the test
/// split; 20k stays well inside it, so rejection sampling stays fast.
pub const MAX_PROMPTS: usize = 20_000;

/// FNV-1a, 64 bits: a hash that does not change with the Rust version or platform.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The split a spec belongs to: decided by its key's hash alone, whatever the seed.
pub fn split_of(spec: &Spec) -> Split {
    if fnv1a64(&spec.key()) % 1000 < TEST_PERMILLE {
        Split::Test
    } else {
        Split::Train
    }
}

/// Draws one spec (any split) from `rng`.
pub fn sample_spec(rng: &mut impl Rng) -> Spec {
    let topic = &TOPICS[rng.gen_range(0..TOPICS.len())];
    let task = match rng.gen_range(0..6) {
        0 => Task::Explain,
        1 => Task::List { n: rng.gen_range(3..=5) },
        2 => Task::Describe,
        3 => Task::Advice,
        4 => Task::Story,
        _ => Task::Compare { other: topic.versus.to_string() },
    };
    let format = match &task {
        Task::List { n } => Some(Format::Bullets { n: *n }),
        Task::Story => [None, Some(Format::Paragraph)][rng.gen_range(0..2)].clone(),
        _ => match rng.gen_range(0..5) {
            0 | 1 => None,
            2 => Some(Format::Paragraph),
            3 => Some(Format::Sentence),
            _ => Some(Format::Bullets { n: rng.gen_range(3..=4) }),
        },
    };
    // Limits in steps of 5 words; a sentence gets 15-30, a list at least 8 words per item.
    let (lo, hi) = match &format {
        Some(Format::Sentence) => (15, 30),
        Some(Format::Bullets { n }) => ((8 * n).div_ceil(5) * 5, 60),
        _ => (20, 60),
    };
    let max_words = lo + 5 * rng.gen_range(0..=(hi - lo) / 5);
    let k = rng.gen_range(1..=2);
    let required_words: Vec<String> = topic.words.choose_multiple(rng, k).map(|w| w.to_string()).collect();
    Spec { topic: topic.name.to_string(), description: topic.description.to_string(), task, required_words, max_words, format }
}

fn quoted_words(words: &[String]) -> String {
    let q: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
    match q.len() {
        0 => String::new(),
        1 => q[0].clone(),
        _ => format!("{} and {}", q[..q.len() - 1].join(", "), q[q.len() - 1]),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Renders a spec as an English instruction, picking among a few wordings with `rng`. Every part of
/// the spec (topic, task, words, limit, format) is named in the text.
pub fn render(spec: &Spec, rng: &mut impl Rng) -> String {
    let topic = &spec.topic;
    let pick = |rng: &mut dyn rand::RngCore, xs: &[String]| xs[rng.gen_range(0..xs.len())].clone();
    let task = match &spec.task {
        Task::Explain => pick(
            rng,
            &[
                format!("Explain {topic} to a beginner."),
                format!("What is {topic}? Explain it simply."),
                format!("Can you explain {topic} to a ten-year-old?"),
            ],
        ),
        Task::List { n } => pick(
            rng,
            &[
                format!("List {n} interesting facts about {topic}."),
                format!("Give me {n} things everyone should know about {topic}."),
                format!("Name {n} good things about {topic}."),
            ],
        ),
        Task::Describe => pick(
            rng,
            &[
                format!("Describe {topic}."),
                format!("Write a short description of {topic}."),
                format!("How would you describe {topic} to a friend?"),
            ],
        ),
        Task::Advice => pick(
            rng,
            &[
                format!("Give some advice to someone who wants to learn about {topic}."),
                format!("What advice would you give a beginner about {topic}?"),
                format!("Share practical tips about {topic}."),
            ],
        ),
        Task::Story => pick(
            rng,
            &[
                format!("Write a very short story about {topic}."),
                format!("Tell me a short story about {topic}."),
                format!("Write a tiny story in which {topic} plays a part."),
            ],
        ),
        Task::Compare { other } => pick(
            rng,
            &[
                format!("Compare {topic} and {other}."),
                format!("What are the differences between {topic} and {other}?"),
                format!("How is {topic} different from {other}?"),
            ],
        ),
    };
    let format = match &spec.format {
        None => None,
        Some(Format::Bullets { n }) => Some(pick(
            rng,
            &[format!("Answer as a bullet list of exactly {n} items."), format!("Write exactly {n} bullet points, one per line.")],
        )),
        Some(Format::Paragraph) => Some(pick(rng, &["Answer in one paragraph.".into(), "Write a single paragraph.".into()])),
        Some(Format::Sentence) => Some(pick(rng, &["Answer in a single sentence.".into(), "Reply with one sentence only.".into()])),
    };
    let words = quoted_words(&spec.required_words);
    let word_s = if spec.required_words.len() == 1 { "word" } else { "words" };
    let require = pick(
        rng,
        &[format!("Use the {word_s} {words}."), format!("Include the {word_s} {words}."), format!("Make sure to mention {words}.")],
    );
    let limit = spec.max_words;
    let limit = pick(
        rng,
        &[format!("Use at most {limit} words."), format!("Keep it under {} words.", limit + 1), format!("No more than {limit} words.")],
    );
    let mut parts = vec![capitalize(&task)];
    parts.extend(format);
    parts.push(require);
    parts.push(limit);
    parts.join(" ")
}

/// `n` prompts of `split`, deterministic for `seed`: specs drawn from a ChaCha8 stream seeded with
/// `seed` (one stream per split), those of the other split dropped (see [`split_of`]), repeated keys
/// dropped. Ids are `{split}-s{seed}-{i:05}`. Errors if `n > MAX_PROMPTS`.
pub fn generate_split(split: Split, n: usize, seed: u64) -> Result<Vec<TestbedPrompt>> {
    if n > MAX_PROMPTS {
        return Err(Error::Input(format!("testbed prompts: n = {n} is more than MAX_PROMPTS = {MAX_PROMPTS}")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(match split {
        Split::Train => 1,
        Split::Test => 2,
    });
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let spec = sample_spec(&mut rng);
        if split_of(&spec) != split || !seen.insert(spec.key()) {
            continue;
        }
        let text = render(&spec, &mut rng);
        out.push(TestbedPrompt { id: format!("{split}-s{seed}-{:05}", out.len()), text, spec });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_well_formed() {
        assert!((60..=100).contains(&TOPICS.len()), "{} topics", TOPICS.len());
        let mut names = HashSet::new();
        for t in TOPICS {
            assert!(names.insert(t.name), "duplicate topic {}", t.name);
            assert!(t.description.ends_with('.'), "{}", t.name);
            let ws: HashSet<&str> = t.words.iter().copied().collect();
            assert_eq!(ws.len(), 6, "{}: repeated word", t.name);
            for w in t.words {
                assert!(w.chars().all(|c| c.is_ascii_lowercase()), "{}: word {w:?}", t.name);
            }
        }
    }

    #[test]
    fn fnv_is_stable() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a64(""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn specs_are_consistent_and_rendered() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..2000 {
            let s = sample_spec(&mut rng);
            assert!((15..=60).contains(&s.max_words), "{s:?}");
            assert!((1..=2).contains(&s.required_words.len()));
            if let Task::List { n } = s.task {
                assert_eq!(s.format, Some(Format::Bullets { n }));
            }
            let text = render(&s, &mut rng);
            assert!(text.contains(&s.topic), "{text}");
            for w in &s.required_words {
                assert!(text.contains(&format!("\"{w}\"")), "{text}");
            }
            assert!(text.contains(&s.max_words.to_string()) || text.contains(&(s.max_words + 1).to_string()));
        }
    }

    #[test]
    fn json_round_trip() {
        let ps = generate_split(Split::Test, 20, 1).unwrap();
        for p in &ps {
            let j = p.to_json();
            assert!(!j.contains('\n'));
            assert_eq!(&TestbedPrompt::from_json(&j).unwrap(), p);
        }
        assert!(TestbedPrompt::from_json("{\"id\": 1}").is_err());
    }

    #[test]
    fn too_many_prompts_is_an_error() {
        assert!(generate_split(Split::Train, MAX_PROMPTS + 1, 0).is_err());
    }
}
