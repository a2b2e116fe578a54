//! What a WHIP offer asks for, read from its text before str0m sees it (str0m keeps its own
//! parse private): the codecs to enable, and the bounds on its shape.

use super::WhipError;

/// What the offer asks for, read before str0m sees it (str0m keeps its parse private).
pub struct OfferShape {
    pub video: bool,
    pub h264: bool,
    pub audio: bool,
    pub stereo: bool,
}

pub fn offer_shape(offer: &str) -> Result<OfferShape, WhipError> {
    let lower = offer.to_ascii_lowercase();
    let has = |m: &str| lower.lines().any(|l| l.trim_start().starts_with(m));
    if !has("m=") {
        return Err(WhipError::MalformedSdp("no media section".into()));
    }
    let video = lower.contains(" vp8/90000");
    let h264 = lower.contains(" h264/90000");
    let audio = lower.contains(" opus/48000");
    let count = |m: &str| {
        lower
            .lines()
            .filter(|l| l.trim_start().starts_with(m))
            .count()
    };
    if count("m=video") > 1 || count("m=audio") > 1 {
        return Err(WhipError::Rejected(
            "one video and one audio section at most".into(),
        ));
    }
    if has("a=simulcast") || has("a=rid:") {
        return Err(WhipError::Rejected(
            "simulcast is not taken; send one layer".into(),
        ));
    }
    if !video && !h264 && !audio {
        return Err(WhipError::UnsupportedCodec(
            "the offer has no VP8 or H.264 video and no Opus audio".into(),
        ));
    }
    Ok(OfferShape {
        video,
        h264,
        audio,
        stereo: lower.contains("stereo=1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                         a=fmtp:111 stereo=1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
                         a=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\n";

    #[test]
    fn codecs_and_bounds_are_read_from_the_text() {
        let shape = offer_shape(OFFER).unwrap();
        assert!(shape.video && shape.h264 && shape.audio && shape.stereo);
        let two = format!("{OFFER}m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        assert!(matches!(offer_shape(&two), Err(WhipError::Rejected(_))));
        let simulcast = format!("{OFFER}a=simulcast:send f;h\r\n");
        assert!(matches!(
            offer_shape(&simulcast),
            Err(WhipError::Rejected(_))
        ));
        let vp9 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 VP9/90000\r\n";
        assert!(matches!(
            offer_shape(vp9),
            Err(WhipError::UnsupportedCodec(_))
        ));
        assert!(matches!(
            offer_shape("hello"),
            Err(WhipError::MalformedSdp(_))
        ));
    }
}
