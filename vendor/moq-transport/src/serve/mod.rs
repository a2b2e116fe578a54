// SPDX-FileCopyrightText: 2024-2026 Cloudflare Inc., Luke Curley, Mike English and contributors
// SPDX-FileCopyrightText: 2023-2024 Luke Curley and contributors
// SPDX-License-Identifier: MIT OR Apache-2.0

mod datagram;
mod error;
mod object;
mod stream;
mod subgroup;
mod track;
mod tracks;

pub use datagram::*;
pub use error::*;
pub use object::*;
pub use stream::*;
pub use subgroup::*;
pub use track::*;
pub use tracks::*;
