// SPDX-FileCopyrightText: 2024-2026 Cloudflare Inc., Luke Curley, Mike English and contributors
// SPDX-FileCopyrightText: 2023-2024 Luke Curley and contributors
// SPDX-License-Identifier: MIT OR Apache-2.0

mod datagram;
mod extension_headers;
mod fetch;
mod header;
mod object_status;
mod reset_code;
mod subgroup;

pub use datagram::*;
pub use extension_headers::*;
pub use fetch::*;
pub use header::*;
pub use object_status::*;
pub use reset_code::*;
pub use subgroup::*;
