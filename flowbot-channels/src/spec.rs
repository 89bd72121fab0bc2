//! One shape for every channel: [`ChannelSpec`] turns a channel's settings into what a bot
//! needs ([`Built`]: the channel, its HTTP routes, its counters, its command menu), the same
//! way for the built-in platforms and for a channel of your own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flowbot_core::{Channel, CommandInfo, Store, async_trait};

use crate::{AdapterStats, Error};

/// Where a channel is built: the bot's store, and whether this process receives traffic or
/// only sends (an agent delivering replies, which holds no sockets, polls nothing and serves
/// no routes).
#[derive(Clone)]
pub struct Setup {
    store: Arc<dyn Store>,
    receive: bool,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("receive", &self.receive)
            .finish_non_exhaustive()
    }
}

impl Setup {
    /// Channels on `store` that receive and send.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Setup {
            store,
            receive: true,
        }
    }

    /// Channels that only send: no listener, no routes, no calls to the platform at start.
    pub fn send_only(mut self) -> Self {
        self.receive = false;
        self
    }

    /// The bot's store: inbound events are stored on its queue before a platform is answered.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the channel should receive (listen, serve its routes).
    pub fn receives(&self) -> bool {
        self.receive
    }
}

/// A future a server waits for before it opens its port (web chat's listener running).
pub type Ready = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a [`ChannelSpec`] builds: add [`channels`](Built::channels) to the bot, serve
/// [`routes`](Built::routes), report [`stats`](Built::stats), declare the bot's commands
/// through [`menus`](Built::menus), and serve once every future of
/// [`ready`](Built::ready) has resolved. `flowbot-server` does all of that for any spec.
#[non_exhaustive]
pub struct Built {
    /// The channels (one, or several sharing routes, like the generic webhooks).
    pub channels: Vec<Channel>,
    /// The HTTP routes the channel receives on (feature `routes`, which every HTTP-fed
    /// platform enables), with their own verification: merge them into the application's
    /// axum router.
    #[cfg(feature = "routes")]
    #[cfg_attr(docsrs, doc(cfg(feature = "routes")))]
    pub routes: Option<axum::Router>,
    /// Counters for metrics.
    pub stats: Vec<Arc<dyn AdapterStats>>,
    /// Platforms that list the bot's commands (Telegram's menu, Discord's slash commands).
    pub menus: Vec<Arc<dyn CommandMenu>>,
    /// Futures to wait for before serving the routes.
    pub ready: Vec<Ready>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("channels", &self.channels)
            .field("stats", &self.stats.len())
            .field("menus", &self.menus.len())
            .finish_non_exhaustive()
    }
}

impl Built {
    /// `channel`, with no routes, counters or menu yet.
    pub fn new(channel: Channel) -> Self {
        Built::many(vec![channel])
    }

    /// Several channels that belong together.
    pub fn many(channels: Vec<Channel>) -> Self {
        Built {
            channels,
            #[cfg(feature = "routes")]
            routes: None,
            stats: Vec::new(),
            menus: Vec::new(),
            ready: Vec::new(),
        }
    }

    /// With HTTP routes.
    #[cfg(feature = "routes")]
    #[cfg_attr(docsrs, doc(cfg(feature = "routes")))]
    pub fn routes(mut self, routes: axum::Router) -> Self {
        self.routes = Some(match self.routes.take() {
            Some(have) => have.merge(routes),
            None => routes,
        });
        self
    }

    /// With counters.
    pub fn stats(mut self, stats: Arc<dyn AdapterStats>) -> Self {
        self.stats.push(stats);
        self
    }

    /// With a command menu.
    pub fn menu(mut self, menu: Arc<dyn CommandMenu>) -> Self {
        self.menus.push(menu);
        self
    }

    /// Serve only once `ready` has resolved.
    pub fn ready_when(mut self, ready: impl Future<Output = ()> + Send + 'static) -> Self {
        self.ready.push(Box::pin(ready));
        self
    }
}

/// A channel's settings, ready to be built: every built-in channel's configuration
/// implements it ([`TelegramConfig`](crate::telegram::TelegramConfig),
/// [`SlackConfig`](crate::slack::SlackConfig), …, a [`WebChat`](crate::web::WebChat), the
/// generic webhooks' `Vec<WebhookConfig>`), and so does a [`Channel`] put together by hand.
/// Implement it for a channel of your own and `flowbot-server` mounts its routes, counts it
/// and declares commands to it like the built-in ones.
#[async_trait]
pub trait ChannelSpec: Send + Sync {
    /// Check the settings and build the channel (calling the platform if it must, to learn
    /// the bot's name or register a webhook). With [`Setup::send_only`], build only the
    /// sending half, without calls to the platform.
    async fn build(&self, setup: &Setup) -> Result<Built, Error>;
}

/// A platform that shows the bot's commands to its users.
#[async_trait]
pub trait CommandMenu: Send + Sync {
    /// The channel.
    fn channel(&self) -> &str;

    /// Declare `commands` (replacing the list the platform had); returns how many the
    /// platform took (names it cannot show are left out).
    async fn declare(&self, commands: &[CommandInfo]) -> Result<usize, Error>;
}

#[async_trait]
impl ChannelSpec for Channel {
    /// The channel itself; with [`Setup::send_only`], without its listener.
    async fn build(&self, setup: &Setup) -> Result<Built, Error> {
        let channel = if setup.receives() {
            self.clone()
        } else {
            Channel::from_parts(self.name().clone(), self.sender().clone(), None)
        };
        Ok(Built::new(channel))
    }
}

#[async_trait]
impl<T: ChannelSpec + ?Sized> ChannelSpec for Box<T> {
    async fn build(&self, setup: &Setup) -> Result<Built, Error> {
        (**self).build(setup).await
    }
}

#[async_trait]
impl<T: ChannelSpec + ?Sized> ChannelSpec for Arc<T> {
    async fn build(&self, setup: &Setup) -> Result<Built, Error> {
        (**self).build(setup).await
    }
}
