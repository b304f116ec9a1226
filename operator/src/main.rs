//! The oxcast operator. Its controller arrives with the LiveApplication API;
//! until then the binary only reports that it is not implemented yet.

fn main() {
    eprintln!("oxcast-operator: the LiveApplication controller is not built yet");
    std::process::exit(2);
}
