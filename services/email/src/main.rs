fn main() {
    eprintln!(
        "mesh-{} is not implemented yet (see the subscribers issue)",
        email::SERVICE
    );
    std::process::exit(2);
}
