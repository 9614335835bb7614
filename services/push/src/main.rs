fn main() {
    eprintln!(
        "mesh-{} is not implemented yet (see the subscribers issue)",
        push::SERVICE
    );
    std::process::exit(2);
}
