//! Just enough of an H.264 sequence parameter set parser to report the
//! picture size (for logs and the streams API).
//!
//! The SPS comes from the publisher, so every field is client-controlled:
//! each read and every piece of size arithmetic is checked, and a malformed
//! SPS yields an [`SpsError`] naming the field, never a panic (debug builds)
//! or a wrapped-around size (release builds).

/// Why an SPS could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpsError {
    /// The NAL unit ended before the field.
    #[error("SPS ends before {0}")]
    Truncated(&'static str),
    /// An Exp-Golomb code with more than 31 leading zeros (no valid value).
    #[error("SPS field {0} has an Exp-Golomb code longer than 32 bits")]
    ExpGolombTooLong(&'static str),
    /// A field outside the range H.264 allows.
    #[error("SPS field {field} is {value}, more than the maximum {max}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        max: u32,
    },
    /// The cropping window is larger than the coded picture.
    #[error("SPS cropping ({crop} pixels) exceeds the coded {dimension} ({coded} pixels)")]
    CropTooLarge {
        dimension: &'static str,
        crop: u32,
        coded: u32,
    },
}

/// Reads bits MSB-first from an RBSP (emulation prevention bytes removed).
struct BitReader {
    data: Vec<u8>,
    pos: usize,
}

impl BitReader {
    fn bit(&mut self, field: &'static str) -> Result<u32, SpsError> {
        let byte = *self
            .data
            .get(self.pos / 8)
            .ok_or(SpsError::Truncated(field))?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    /// `n` ≤ 32 bits as an unsigned number.
    fn bits(&mut self, n: u32, field: &'static str) -> Result<u32, SpsError> {
        (0..n).try_fold(0u32, |acc, _| Ok((acc << 1) | self.bit(field)?))
    }

    /// Unsigned Exp-Golomb code (at most 2^32 - 2).
    fn ue(&mut self, field: &'static str) -> Result<u32, SpsError> {
        let mut zeros = 0;
        while self.bit(field)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(SpsError::ExpGolombTooLong(field));
            }
        }
        // (2^zeros - 1) + a zeros-bit suffix: at most 2^32 - 2 for zeros = 31.
        let prefix = (1u32 << zeros) - 1;
        let suffix = self.bits(zeros, field)?;
        prefix
            .checked_add(suffix)
            .ok_or(SpsError::ExpGolombTooLong(field))
    }

    /// Unsigned Exp-Golomb code that H.264 limits to `max`.
    fn ue_max(&mut self, field: &'static str, max: u32) -> Result<u32, SpsError> {
        let value = self.ue(field)?;
        if value > max {
            return Err(SpsError::OutOfRange { field, value, max });
        }
        Ok(value)
    }

    /// Signed Exp-Golomb code.
    fn se(&mut self, field: &'static str) -> Result<i64, SpsError> {
        let k = i64::from(self.ue(field)?);
        let magnitude = (k + 1) / 2;
        Ok(if k % 2 == 1 { magnitude } else { -magnitude })
    }
}

fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fn skip_scaling_list(r: &mut BitReader, size: usize) -> Result<(), SpsError> {
    let mut last = 8i64;
    let mut next = 8i64;
    for _ in 0..size {
        if next != 0 {
            // delta_scale is -128..=127 in a valid stream; rem_euclid keeps
            // any value in 0..256 without overflow.
            next = (last + r.se("delta_scale")?).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Largest picture H.264 can describe at level 6.2: 139,264 macroblocks a
/// frame; a side of 2^16 macroblocks is far beyond it and keeps every size in
/// u32 without overflow.
const MAX_SIDE_MBS: u32 = 1 << 16;

/// Width and height in pixels after cropping, from an SPS NAL unit
/// (including its one-byte NAL header).
pub fn resolution(sps: &[u8]) -> Result<(u32, u32), SpsError> {
    let mut r = BitReader {
        data: unescape(sps.get(1..).ok_or(SpsError::Truncated("the NAL header"))?),
        pos: 0,
    };
    let profile_idc = r.bits(8, "profile_idc")?;
    r.bits(16, "constraint flags and level_idc")?;
    r.ue_max("seq_parameter_set_id", 31)?;
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue_max("chroma_format_idc", 3)?;
        if chroma_format_idc == 3 {
            r.bit("separate_colour_plane_flag")?;
        }
        r.ue_max("bit_depth_luma_minus8", 6)?;
        r.ue_max("bit_depth_chroma_minus8", 6)?;
        r.bit("qpprime_y_zero_transform_bypass_flag")?;
        if r.bit("seq_scaling_matrix_present_flag")? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit("seq_scaling_list_present_flag")? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue_max("log2_max_frame_num_minus4", 12)?;
    match r.ue_max("pic_order_cnt_type", 2)? {
        0 => {
            r.ue_max("log2_max_pic_order_cnt_lsb_minus4", 12)?;
        }
        1 => {
            r.bit("delta_pic_order_always_zero_flag")?;
            r.se("offset_for_non_ref_pic")?;
            r.se("offset_for_top_to_bottom_field")?;
            let cycle = r.ue_max("num_ref_frames_in_pic_order_cnt_cycle", 255)?;
            for _ in 0..cycle {
                r.se("offset_for_ref_frame")?;
            }
        }
        _ => {}
    }
    r.ue("max_num_ref_frames")?;
    r.bit("gaps_in_frame_num_value_allowed_flag")?;
    let width_mbs = r.ue_max("pic_width_in_mbs_minus1", MAX_SIDE_MBS - 1)? + 1;
    let height_map_units = r.ue_max("pic_height_in_map_units_minus1", MAX_SIDE_MBS - 1)? + 1;
    let frame_mbs_only = r.bit("frame_mbs_only_flag")?;
    if frame_mbs_only == 0 {
        r.bit("mb_adaptive_frame_field_flag")?;
    }
    r.bit("direct_8x8_inference_flag")?;
    let mut crop = [0u32; 4]; // left, right, top, bottom
    if r.bit("frame_cropping_flag")? == 1 {
        for (value, field) in crop.iter_mut().zip([
            "frame_crop_left_offset",
            "frame_crop_right_offset",
            "frame_crop_top_offset",
            "frame_crop_bottom_offset",
        ]) {
            // An offset beyond the picture is caught below; this bound only
            // keeps the multiplications in range.
            *value = r.ue_max(field, MAX_SIDE_MBS * 16)?;
        }
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_unit_x = if chroma_format_idc == 0 { 1 } else { sub_w };
    let crop_unit_y = (if chroma_format_idc == 0 { 1 } else { sub_h }) * (2 - frame_mbs_only);
    // All factors are bounded above (2^16 · 16 · 2 and 2^21 · 4), so the
    // products fit in u32; checked_mul documents and enforces it anyway.
    let overflow = |dimension| SpsError::CropTooLarge {
        dimension,
        crop: u32::MAX,
        coded: 0,
    };
    let coded_width = width_mbs.checked_mul(16).ok_or(overflow("width"))?;
    let coded_height = height_map_units
        .checked_mul(16 * (2 - frame_mbs_only))
        .ok_or(overflow("height"))?;
    let crop_x = (crop[0] + crop[1])
        .checked_mul(crop_unit_x)
        .ok_or(overflow("width"))?;
    let crop_y = (crop[2] + crop[3])
        .checked_mul(crop_unit_y)
        .ok_or(overflow("height"))?;
    let width =
        coded_width
            .checked_sub(crop_x)
            .filter(|w| *w > 0)
            .ok_or(SpsError::CropTooLarge {
                dimension: "width",
                crop: crop_x,
                coded: coded_width,
            })?;
    let height =
        coded_height
            .checked_sub(crop_y)
            .filter(|h| *h > 0)
            .ok_or(SpsError::CropTooLarge {
                dimension: "height",
                crop: crop_y,
                coded: coded_height,
            })?;
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS as written by x264 for 1280x720 High profile, level 3.1.
    const X264_720P: [u8; 26] = [
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03,
        0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
    ];

    /// Writes a Baseline-profile SPS bit by bit, for crafted fields.
    #[derive(Default)]
    struct SpsWriter {
        bits: Vec<bool>,
    }

    impl SpsWriter {
        fn bits(&mut self, value: u64, n: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push((value >> i) & 1 == 1);
            }
            self
        }
        fn ue(&mut self, value: u64) -> &mut Self {
            let coded = value + 1;
            let len = 64 - coded.leading_zeros();
            self.bits(0, len - 1).bits(coded, len)
        }
        /// A Baseline SPS up to and including the picture size and cropping.
        fn baseline(width_mbs_minus1: u64, height_minus1: u64, crop: Option<[u64; 4]>) -> Vec<u8> {
            let mut w = SpsWriter::default();
            w.bits(66, 8).bits(0, 8).bits(30, 8); // profile, constraints, level
            w.ue(0).ue(0).ue(0).ue(0); // sps id, log2_max_frame_num, poc type 0, lsb
            w.ue(1).bits(0, 1); // max_num_ref_frames, gaps
            w.ue(width_mbs_minus1).ue(height_minus1);
            w.bits(1, 1).bits(1, 1); // frame_mbs_only, direct_8x8
            match crop {
                Some(c) => {
                    w.bits(1, 1);
                    for v in c {
                        w.ue(v);
                    }
                }
                None => {
                    w.bits(0, 1);
                }
            }
            w.bits(0, 1).bits(1, 1); // vui_parameters_present_flag, rbsp stop bit
            let mut out = vec![0x67];
            for chunk in w.bits.chunks(8) {
                let mut byte = 0u8;
                for (i, b) in chunk.iter().enumerate() {
                    byte |= u8::from(*b) << (7 - i);
                }
                out.push(byte);
            }
            out
        }
    }

    #[test]
    fn reads_1280x720_high_profile() {
        assert_eq!(resolution(&X264_720P), Ok((1280, 720)));
    }

    #[test]
    fn reads_crafted_baseline_with_cropping() {
        // 1920x1088 coded, 8 lines cropped at the bottom (4 crop units).
        let sps = SpsWriter::baseline(119, 67, Some([0, 0, 0, 4]));
        assert_eq!(resolution(&sps), Ok((1920, 1080)));
        let sps = SpsWriter::baseline(39, 29, None);
        assert_eq!(resolution(&sps), Ok((640, 480)));
    }

    #[test]
    fn huge_picture_size_is_a_range_error_not_an_overflow() {
        // 2^32 - 2 macroblocks wide: width_mbs * 16 overflowed u32 before.
        let sps = SpsWriter::baseline(u64::from(u32::MAX) - 1, 29, None);
        assert_eq!(
            resolution(&sps),
            Err(SpsError::OutOfRange {
                field: "pic_width_in_mbs_minus1",
                value: u32::MAX - 1,
                max: MAX_SIDE_MBS - 1,
            })
        );
    }

    #[test]
    fn huge_cropping_is_an_error_not_an_overflow() {
        let sps = SpsWriter::baseline(39, 29, Some([u64::from(u32::MAX) - 1, 0, 0, 0]));
        assert!(matches!(
            resolution(&sps),
            Err(SpsError::OutOfRange {
                field: "frame_crop_left_offset",
                ..
            })
        ));
        // In range for the arithmetic, larger than the picture.
        let sps = SpsWriter::baseline(39, 29, Some([200, 200, 0, 0]));
        assert_eq!(
            resolution(&sps),
            Err(SpsError::CropTooLarge {
                dimension: "width",
                crop: 800,
                coded: 640,
            })
        );
        // Cropped to nothing.
        let sps = SpsWriter::baseline(39, 29, Some([0, 0, 120, 120]));
        assert!(matches!(
            resolution(&sps),
            Err(SpsError::CropTooLarge {
                dimension: "height",
                ..
            })
        ));
    }

    #[test]
    fn overlong_exp_golomb_and_truncation_are_named() {
        // 40 zero bits after the header: no Exp-Golomb code can start there.
        let mut sps = vec![0x67, 66, 0, 30];
        sps.extend([0u8; 5]);
        sps.push(0xff);
        assert_eq!(
            resolution(&sps),
            Err(SpsError::ExpGolombTooLong("seq_parameter_set_id"))
        );
        assert!(matches!(
            resolution(&X264_720P[..6]),
            Err(SpsError::Truncated(_))
        ));
        assert_eq!(resolution(&[]), Err(SpsError::Truncated("the NAL header")));
    }

    #[test]
    fn garbage_does_not_panic() {
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = resolution(&junk);
        }
        // Every prefix and every single-bit flip of a real SPS.
        for len in 0..X264_720P.len() {
            let _ = resolution(&X264_720P[..len]);
        }
        for bit in 8..X264_720P.len() * 8 {
            let mut sps = X264_720P;
            sps[bit / 8] ^= 1 << (7 - bit % 8);
            let _ = resolution(&sps);
        }
    }
}
